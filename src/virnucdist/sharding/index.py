"""SequenceIndex: a compact columnar index over one or more FASTA files.

One row per record, in input order (files in the order given, records in file
order)::

    file_idx  int32   which entry of ``files`` holds the record
    offset    int64   byte offset of the first byte after the header line
    nbytes    int64   bytes to read from ``offset`` (sequence lines, newlines included)
    length    int64   sequence letters (ASCII whitespace excluded)
    header_line int64 1-based line number of the record's header (for messages)
    ids       list[str]  first word of the header (stored as one UTF-8 blob)

Reading record ``i`` is one positional read (``os.pread``) of ``nbytes`` bytes
and a whitespace strip: the same rules as :func:`virnucdist.fasta.read_fasta`.

Building scans each file once, in binary blocks, with numpy doing the per-byte
work (newline and header positions, whitespace counts) and ``hashlib`` hashing
the same blocks, so the content fingerprint costs no extra pass.

Gzip inputs (recognised by magic bytes) are decompressed once into
``gzip_dir`` (the run directory) and indexed as plain files: random access into
a gzip stream would mean re-inflating from the start for every record, so one
sequential decompression to disk is the cheapest way to give DataLoader workers
O(1) reads. ``sources`` keeps the original paths (used in messages and the
cache identity); ``files`` holds the paths that are actually read.

The fingerprint is a sha256 over the *contents* of the inputs (decompressed for
gzip), in input order; never over paths or modification times.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import logging
import os
import shutil
import zlib
from typing import Callable, Iterable, Sequence

import numpy as np

from .._testhooks import test_hook
from ..fasta import WHITESPACE, FastaError, is_gzip

__all__ = ["SequenceIndex", "build_index_distributed", "quick_identity"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
BLOCK_SIZE = 64 << 20
_MAX_OPEN_FILES = 128
_OTHER_WS = (b" ", b"\t", b"\r", b"\v", b"\f")
_BOM = b"\xef\xbb\xbf"

PathLike = str | os.PathLike


def quick_identity(paths: Iterable[PathLike]) -> list[list]:
    """``[abs path, size, mtime_ns]`` per input: the cheap "did anything change" check."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([os.path.abspath(p), int(st.st_size), int(st.st_mtime_ns)])
    return out


# ----------------------------------------------------------------------------- scanning


class _FileScan:
    """Per-file result of :func:`_scan_file` (global byte offsets within the file)."""

    def __init__(self, offset, nbytes, length, header_line, ids, digest, size):
        self.offset = offset
        self.nbytes = nbytes
        self.length = length
        self.header_line = header_line
        self.ids = ids
        self.digest = digest
        self.size = size


def _line_of(buf: bytes, pos: int, lines_before: int) -> int:
    return lines_before + buf.count(b"\n", 0, pos) + 1


def _line_text(buf: bytes, pos: int, n: int = 40) -> str:
    start = buf.rfind(b"\n", 0, pos) + 1
    end = buf.find(b"\n", pos)
    line = buf[start:end if end >= 0 else len(buf)].rstrip(b"\r")
    text = line.decode("utf-8", errors="replace")
    return repr(text[:n] + ("..." if len(text) > n else ""))


def _scan_file(path: str, shown: str, block_size: int = BLOCK_SIZE,
               progress: Callable[[int], None] | None = None) -> _FileScan:
    """Index one plain FASTA file; ``shown`` is the name used in error messages."""
    sha = hashlib.sha256()
    parts: list[tuple] = []     # per chunk: (H, off, C_H, C_off, hline, ids)
    base = 0                    # global offset of the current chunk
    ws_before = 0               # whitespace bytes before the chunk
    lines_before = 0            # newlines before the chunk
    seen_header = False
    carry = b""
    with open(path, "rb", buffering=0) as fh:
        while True:
            block = fh.read(block_size)
            if progress is not None:
                progress(len(block))
            if block:
                sha.update(block)
                buf = carry + block if carry else block
                n = buf.rfind(b"\n") + 1
                if n == 0:            # no complete line yet: keep reading
                    carry = buf
                    continue
                carry = buf[n:]
                final = False
            else:
                buf, n, carry, final = carry, len(carry), b"", True
                if n == 0:
                    break
            res = _scan_chunk(buf, n, base, ws_before, lines_before, seen_header, shown)
            (H, off, C_H, C_off, hline, ids, nws, nnl) = res
            if len(H):
                seen_header = True
                parts.append((H, off, C_H, C_off, hline, ids))
            base += n
            ws_before += nws
            lines_before += nnl
            if final:
                break
    size = base
    if not parts:
        what = "the file is empty" if size == 0 else "the file contains only blank lines"
        raise FastaError(
            shown, max(lines_before, 1),
            f"no FASTA records ({what}); expected '>id' header lines each followed by sequence lines",
        )
    H = np.concatenate([p[0] for p in parts])
    off = np.concatenate([p[1] for p in parts])
    C_H = np.concatenate([p[2] for p in parts])
    C_off = np.concatenate([p[3] for p in parts])
    hline = np.concatenate([p[4] for p in parts])
    ids: list[str] = [x for p in parts for x in p[5]] if len(parts) > 1 else parts[0][5]
    end = np.empty_like(H)
    end[:-1] = H[1:]
    end[-1] = size
    C_end = np.empty_like(C_H)
    C_end[:-1] = C_H[1:]
    C_end[-1] = ws_before
    nbytes = end - off
    length = nbytes - (C_end - C_off)
    return _FileScan(off, nbytes, length, hline, ids, sha.hexdigest(), size)


def _scan_chunk(buf: bytes, n: int, base: int, ws_before: int, lines_before: int,
                seen_header: bool, shown: str):
    """Scan ``buf[:n]``, which starts at a line start and ends at a line end (or EOF).

    Returns global arrays for the headers in the chunk plus the chunk's whitespace
    and newline counts. ``C`` values are "whitespace bytes before this position".
    """
    if buf.find(b"\x00", 0, n) >= 0:
        pos = buf.index(b"\x00")
        raise FastaError(
            shown, _line_of(buf, pos, lines_before),
            "binary data (NUL byte); this is not a text FASTA file "
            "(compressed with something other than gzip? corrupted?)",
        )
    arr = np.frombuffer(buf, dtype=np.uint8, count=n)
    nl = np.flatnonzero(arr == 10)
    present = [c for c in _OTHER_WS if buf.find(c, 0, n) >= 0]
    if present:
        mask = arr == present[0][0]
        for c in present[1:]:
            mask |= arr == c[0]
        ows = np.flatnonzero(mask)
    else:
        ows = np.empty(0, dtype=np.int64)

    # line starts; the chunk starts at a line start
    starts = np.empty(len(nl) + 1, dtype=np.int64)
    starts[0] = 0
    starts[1:] = nl + 1
    if starts[-1] >= n:
        starts = starts[:-1]
    first = 0
    if base == 0 and buf.startswith(_BOM):
        first = len(_BOM)
        starts[0] = first
    H = starts[arr[starts] == 62] if len(starts) else starts

    if not seen_header:
        pre_end = int(H[0]) if len(H) else n
        pre = buf[first:pre_end]
        if pre.translate(None, WHITESPACE):
            pos = first + len(pre) - len(pre.lstrip(WHITESPACE))
            text = _line_text(buf, pos)
            hint = ""
            if buf[pos:pos + 1] == b"@":
                hint = " It looks like FASTQ; convert it to FASTA first (e.g. `seqkit fq2fa`)."
            try:
                buf[pos:buf.find(b"\n", pos) if buf.find(b"\n", pos) >= 0 else n].decode("utf-8")
            except UnicodeDecodeError:
                raise FastaError(shown, _line_of(buf, pos, lines_before),
                                 "not valid UTF-8 text; this looks like a binary or corrupted "
                                 "file, not FASTA") from None
            raise FastaError(
                shown, _line_of(buf, pos, lines_before),
                f"expected a FASTA header line starting with '>', found {text}; "
                f"is this a FASTA file?{hint}",
            )

    k = np.searchsorted(nl, H)                # newlines before each header
    has_nl = k < len(nl)
    E = np.where(has_nl, nl[np.minimum(k, max(len(nl) - 1, 0))] if len(nl) else n, n)
    off = np.where(has_nl, E + 1, n)
    C_H = k + np.searchsorted(ows, H)
    C_off = np.searchsorted(nl, off) + np.searchsorted(ows, off)
    hline = lines_before + k + 1

    # ids: header bytes up to the first whitespace
    id_start = H + 1
    id_end = E.copy()
    if len(ows):
        j = np.searchsorted(ows, id_start)
        nxt = np.where(j < len(ows), ows[np.minimum(j, len(ows) - 1)], n)
        id_end = np.minimum(id_end, nxt)
    slices = [buf[a:b] for a, b in zip(id_start.tolist(), id_end.tolist())]
    for i in np.flatnonzero(id_end <= id_start).tolist():   # rare: '>' alone or '>  id'
        words = buf[int(id_start[i]):int(E[i])].split(None, 1)
        if not words:
            raise FastaError(shown, int(hline[i]),
                             "empty header: '>' must be followed by a sequence id (e.g. '>read_1')")
        slices[i] = words[0]
    try:
        ids = b"\n".join(slices).decode("utf-8").split("\n") if slices else []
    except UnicodeDecodeError:
        for i, s in enumerate(slices):
            try:
                s.decode("utf-8")
            except UnicodeDecodeError:
                raise FastaError(shown, int(hline[i]),
                                 "header is not valid UTF-8 text; this looks like a binary or "
                                 "corrupted file") from None
        raise

    if n and int(arr.max()) >= 128:
        _check_high_bytes(buf, arr, nl, H, E, hline, lines_before, shown, first)

    return (base + H, base + off, ws_before + C_H, ws_before + C_off, hline, ids,
            len(nl) + len(ows), len(nl))


def _check_high_bytes(buf, arr, nl, H, E, hline, lines_before, shown, first=0):
    """Non-ASCII bytes: allowed in headers (if valid UTF-8), never in sequence lines."""
    hi = np.flatnonzero(arr >= 128)
    hi = hi[hi >= first]                       # skip a UTF-8 byte-order mark
    kk = np.searchsorted(H, hi, side="right") - 1
    in_hdr = (kk >= 0) & (hi < E[np.maximum(kk, 0)] if len(H) else np.zeros(len(hi), bool))
    bad = hi[~in_hdr]
    if len(bad):
        pos = int(bad[0])
        line = lines_before + int(np.searchsorted(nl, pos)) + 1
        start = buf.rfind(b"\n", 0, pos) + 1
        end = buf.find(b"\n", pos)
        try:
            buf[start:end if end >= 0 else len(buf)].decode("utf-8")
        except UnicodeDecodeError:
            raise FastaError(shown, line, "not valid UTF-8 text; this looks like a binary or "
                                          "corrupted file, not FASTA") from None
        raise FastaError(shown, line, f"non-ASCII character in sequence line {_line_text(buf, pos)}; "
                                      "sequences must be plain ASCII letters")
    for r in np.unique(kk[in_hdr]).tolist():
        try:
            buf[int(H[r]) + 1:int(E[r])].decode("utf-8")
        except UnicodeDecodeError:
            raise FastaError(shown, int(hline[r]), "header is not valid UTF-8 text; this looks "
                                                   "like a binary or corrupted file") from None


def _decompress(src: str, gzip_dir: str) -> str:
    """Decompress ``src`` once into ``gzip_dir``; returns the plain file's path."""
    os.makedirs(gzip_dir, exist_ok=True)
    name = os.path.basename(src)
    if name.endswith(".gz"):
        name = name[:-3]
    tag = hashlib.sha256(src.encode("utf-8")).hexdigest()[:10]
    dst = os.path.abspath(os.path.join(gzip_dir, f"{tag}-{name}"))
    tmp = f"{dst}.tmp{os.getpid()}"
    try:
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 16 << 20)
        os.replace(tmp, dst)
    except (OSError, EOFError, zlib.error) as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, (FileNotFoundError, PermissionError)) and err.filename == tmp:
            raise
        raise FastaError(src, None, f"corrupt or truncated gzip file ({err}); "
                                    "re-download or recompress it") from None
    return dst


# ----------------------------------------------------------------------------- index


class SequenceIndex:
    """Columnar index of FASTA records; see the module docstring.

    Picklable: open file descriptors are dropped on pickling and reopened lazily
    in each process (also after a plain ``fork``), and reads use ``os.pread``
    (no shared file position), so it is safe inside DataLoader workers.
    """

    def __init__(self, files: Sequence[str], file_idx: np.ndarray, offset: np.ndarray,
                 nbytes: np.ndarray, length: np.ndarray, ids: list[str] | None = None, *,
                 ids_blob: bytes | None = None, header_line: np.ndarray | None = None,
                 sources: Sequence[str] | None = None, fingerprint: str = "",
                 file_digests: Sequence[str] | None = None, file_sizes: Sequence[int] | None = None,
                 identity: list | None = None):
        self.files = [str(f) for f in files]
        self.sources = [str(s) for s in (sources if sources is not None else files)]
        self.file_idx = np.asarray(file_idx, dtype=np.int32)
        self.offset = np.asarray(offset, dtype=np.int64)
        self.nbytes = np.asarray(nbytes, dtype=np.int64)
        self.length = np.asarray(length, dtype=np.int64)
        self.header_line = (np.asarray(header_line, dtype=np.int64) if header_line is not None
                            else np.zeros(len(self.offset), dtype=np.int64))
        if ids is None and ids_blob is None:
            raise ValueError("SequenceIndex needs ids or ids_blob")
        self._ids = list(ids) if ids is not None else None
        self._ids_blob = ids_blob
        self.fingerprint = fingerprint
        self.file_digests = list(file_digests or [])
        self.file_sizes = [int(s) for s in (file_sizes or [])]
        self.identity = identity or []
        self._pos: dict[str, int] | None = None
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        n = len(self.offset)
        for name in ("file_idx", "nbytes", "length", "header_line"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"SequenceIndex column {name} has {len(getattr(self, name))} rows, expected {n}")

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, paths: Sequence[PathLike] | PathLike, *, gzip_dir: PathLike | None = None,
              block_size: int = BLOCK_SIZE, progress: Callable[[int], None] | None = None) -> "SequenceIndex":
        """Scan ``paths`` (plain or gzip FASTA) and return the index.

        Gzip inputs are decompressed once into ``gzip_dir`` (required when any input
        is gzip; pass the run directory) and indexed as plain files. Raises
        :class:`FastaError` for malformed input and for duplicate ids (naming both
        occurrences). Records with an empty sequence are kept with ``length == 0``.
        ``progress(nbytes)`` is called as the (decompressed) inputs are scanned.
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        paths = [os.path.abspath(p) for p in paths]
        if not paths:
            raise ValueError("SequenceIndex.build: no input files given")
        for p in paths:
            if os.path.isdir(p):
                raise FastaError(p, None, "is a directory, not a FASTA file")
            if not os.path.exists(p):
                raise FastaError(p, None, "file not found; check the path")
        identity = quick_identity(paths)
        files, scans = [], []
        for p in paths:
            if is_gzip(p):
                if gzip_dir is None:
                    raise ValueError(
                        f"{p} is gzip-compressed: pass gzip_dir (the run directory) so it can "
                        "be decompressed once there for random access")
                plain = _decompress(p, os.fspath(gzip_dir))
            else:
                plain = p
            files.append(plain)
            scans.append(_scan_file(plain, p, block_size, progress))
        counts = [len(s.offset) for s in scans]
        file_idx = np.repeat(np.arange(len(files), dtype=np.int32), counts)
        ids = [x for s in scans for x in s.ids] if len(scans) > 1 else scans[0].ids
        digests = [s.digest for s in scans]
        sizes = [s.size for s in scans]
        fp = hashlib.sha256()
        for d, sz in zip(digests, sizes):
            fp.update(f"{sz}:{d}\n".encode())
        index = cls(files, file_idx,
                    np.concatenate([s.offset for s in scans]),
                    np.concatenate([s.nbytes for s in scans]),
                    np.concatenate([s.length for s in scans]),
                    ids,
                    header_line=np.concatenate([s.header_line for s in scans]),
                    sources=paths, fingerprint=fp.hexdigest(), file_digests=digests,
                    file_sizes=sizes, identity=identity)
        index._check_unique()
        return index

    def _check_unique(self) -> None:
        ids = self.ids
        pos = dict(zip(ids, range(len(ids))))
        if len(pos) == len(ids):
            self._pos = pos
            return
        seen: dict[str, int] = {}
        for i, rid in enumerate(ids):
            j = seen.setdefault(rid, i)
            if j != i:
                raise FastaError(
                    self.sources[self.file_idx[i]], int(self.header_line[i]),
                    f"duplicate sequence id {rid!r}: first at {self.where(j)}, again at "
                    f"{self.where(i)}; sequence ids must be unique across all input files "
                    "(rename or remove one of them)")

    # ------------------------------------------------------------------ access

    def __len__(self) -> int:
        return len(self.offset)

    def __repr__(self) -> str:
        return (f"SequenceIndex({len(self)} records, {len(self.files)} files, "
                f"fingerprint={self.fingerprint[:12]})")

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            blob = self._ids_blob or b""
            self._ids = blob.decode("utf-8").split("\n") if len(self) else []
        return self._ids

    def _blob(self) -> bytes:
        if self._ids_blob is None:
            self._ids_blob = "\n".join(self._ids or []).encode("utf-8")
        return self._ids_blob

    def position(self, rid: str) -> int:
        """Row of record ``rid``; raises KeyError naming the id when absent."""
        if self._pos is None:
            ids = self.ids
            self._pos = dict(zip(ids, range(len(ids))))
        try:
            return self._pos[rid]
        except KeyError:
            raise KeyError(f"sequence id {rid!r} is not in the index") from None

    def where(self, i: int) -> str:
        """Human-readable location of record ``i``: source file, header line, record number."""
        f = int(self.file_idx[i])
        first = int(np.searchsorted(self.file_idx, f, side="left"))
        return (f"{self.sources[f]}, line {int(self.header_line[i])} "
                f"(record {i - first + 1} of that file)")

    def _fd(self, f: int) -> int:
        if self._pid != os.getpid():          # forked without pickling: don't share fds
            _close_all(self._fds)
            self._fds = {}
            self._pid = os.getpid()
        fd = self._fds.get(f)
        if fd is None:
            if len(self._fds) >= _MAX_OPEN_FILES:
                old = next(iter(self._fds))
                os.close(self._fds.pop(old))
            fd = os.open(self.files[f], os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._fds[f] = fd
        return fd

    def read_bytes(self, i: int) -> bytes:
        """Record ``i``'s sequence as ASCII bytes (whitespace removed)."""
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record {i} out of range for an index of {n} records")
        f = int(self.file_idx[i])
        off = int(self.offset[i])
        size = int(self.nbytes[i])
        fd = self._fd(f)
        data = _pread(fd, size, off)
        seq = data.translate(None, WHITESPACE)
        if len(seq) != self.length[i] or len(data) != size:
            raise RuntimeError(
                f"{self.sources[f]} changed after the sequence index was built "
                f"(record {self.ids[i]!r} at {self.where(i)}: expected {int(self.length[i])} "
                f"letters, read {len(seq)}); delete the index cache and rerun")
        return seq

    def read(self, i: int) -> str:
        """Record ``i``'s sequence (one positional read; whitespace and CR removed)."""
        return self.read_bytes(i).decode("ascii")

    def close(self) -> None:
        if self._pid == os.getpid():
            _close_all(self._fds)
        self._fds = {}

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_ids_blob"] = self._blob()
        state["_ids"] = None            # the blob pickles much faster than a list of str
        state["_pos"] = None
        state["_fds"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fds = {}
        self._pid = os.getpid()

    # ------------------------------------------------------------------ persistence

    def save(self, path: PathLike) -> None:
        """Write an uncompressed ``.npz`` atomically (temp name, then ``os.replace``)."""
        path = os.fspath(path)
        meta = {
            "version": FORMAT_VERSION, "files": self.files, "sources": self.sources,
            "fingerprint": self.fingerprint, "file_digests": self.file_digests,
            "file_sizes": self.file_sizes, "identity": self.identity,
        }
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:
            np.savez(fh, file_idx=self.file_idx, offset=self.offset, nbytes=self.nbytes,
                     length=self.length, header_line=self.header_line,
                     ids_blob=np.frombuffer(self._blob(), dtype=np.uint8),
                     meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8))
        test_hook("index")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: PathLike, *, expected_fingerprint: str | None = None) -> "SequenceIndex":
        """Load a saved index; raises ValueError if ``expected_fingerprint`` is given and differs."""
        with np.load(os.fspath(path), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode("utf-8"))
            if meta.get("version") != FORMAT_VERSION:
                raise ValueError(f"{path}: index format version {meta.get('version')} is not "
                                 f"{FORMAT_VERSION}; delete it to rebuild")
            index = cls(meta["files"], z["file_idx"], z["offset"], z["nbytes"], z["length"],
                        ids_blob=z["ids_blob"].tobytes(), header_line=z["header_line"],
                        sources=meta["sources"], fingerprint=meta["fingerprint"],
                        file_digests=meta["file_digests"], file_sizes=meta["file_sizes"],
                        identity=meta["identity"])
        if expected_fingerprint is not None and index.fingerprint != expected_fingerprint:
            raise ValueError(
                f"{path}: index was built from different inputs (fingerprint "
                f"{index.fingerprint[:12]}, expected {expected_fingerprint[:12]}); "
                "delete it to rebuild")
        return index

    @classmethod
    def load_or_build(cls, paths: Sequence[PathLike] | PathLike, cache_path: PathLike, *,
                      gzip_dir: PathLike | None = None, expected_fingerprint: str | None = None,
                      progress: Callable[[int], None] | None = None) -> "SequenceIndex":
        """Load ``cache_path`` when the inputs' quick identity (path, size, mtime) is
        unchanged (and decompressed copies are intact), else build and save it.

        ``gzip_dir`` defaults to the cache's directory. ``expected_fingerprint``,
        when given, must match the cache, otherwise it is rebuilt (and if the
        rebuilt index still differs, the caller gets the new one: check
        ``.fingerprint`` if the difference matters, e.g. on resume).
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        cache_path = os.fspath(cache_path)
        if gzip_dir is None:
            gzip_dir = os.path.dirname(os.path.abspath(cache_path))
        if os.path.exists(cache_path):
            try:
                cached = cls.load(cache_path)
                reason = cached._stale_reason(paths, expected_fingerprint)
            except (OSError, ValueError, KeyError) as err:
                cached, reason = None, f"unreadable cache ({err})"
            if reason is None:
                return cached
            log.info("rebuilding sequence index %s: %s", cache_path, reason)
        index = cls.build(paths, gzip_dir=gzip_dir, progress=progress)
        index.save(cache_path)
        return index

    def _stale_reason(self, paths: Sequence[PathLike], expected_fingerprint: str | None) -> str | None:
        try:
            current = quick_identity(paths)
        except OSError as err:
            return str(err)
        if current != self.identity:
            return "inputs changed (size or modification time)"
        if expected_fingerprint is not None and expected_fingerprint != self.fingerprint:
            return "fingerprint differs from the expected one"
        for f, size in zip(self.files, self.file_sizes):
            if not os.path.exists(f) or os.path.getsize(f) != size:
                return f"{f} is missing or changed"
        return None


def _close_all(fds: dict[int, int]) -> None:
    for fd in fds.values():
        try:
            os.close(fd)
        except OSError:
            pass


def _pread(fd: int, size: int, off: int) -> bytes:
    if hasattr(os, "pread"):
        data = os.pread(fd, size, off)
        while len(data) < size:                 # short reads are legal
            more = os.pread(fd, size - len(data), off + len(data))
            if not more:
                break
            data += more
        return data
    os.lseek(fd, off, os.SEEK_SET)              # pragma: no cover (Windows)
    return os.read(fd, size)


# ----------------------------------------------------------------------------- distributed


def build_index_distributed(paths: Sequence[PathLike], run_dir: PathLike, rank: int,
                            world_size: int, barrier: Callable[[], None],
                            progress: Callable[[int], None] | None = None) -> SequenceIndex:
    """Rank 0 loads-or-builds ``run_dir/index.npz`` (atomic save); the others wait
    at ``barrier()`` and load it.

    If rank 0 fails it writes ``run_dir/index.error`` with the message, still calls
    ``barrier()`` (so nobody waits forever) and re-raises; the other ranks find the
    file after the barrier and raise a :class:`RuntimeError` with the same message.
    ``barrier`` is ``torch.distributed.barrier`` under torchrun, a no-op for one process.
    """
    run_dir = os.fspath(run_dir)
    cache = os.path.join(run_dir, "index.npz")
    err_path = os.path.join(run_dir, "index.error")
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        if os.path.exists(err_path):
            os.remove(err_path)
        for stale in glob.glob(glob.escape(cache) + ".tmp*"):  # left by a process killed while saving
            os.remove(stale)
        try:
            index = SequenceIndex.load_or_build(paths, cache, gzip_dir=run_dir, progress=progress)
        except BaseException as exc:
            tmp = f"{err_path}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(str(exc) or type(exc).__name__)
            os.replace(tmp, err_path)
            if world_size > 1:
                barrier()
            raise
        if world_size > 1:
            barrier()
        return index
    barrier()
    if os.path.exists(err_path):
        with open(err_path, encoding="utf-8") as fh:
            msg = fh.read()
        from ..errors import PeerFailed

        raise PeerFailed(f"rank 0 failed to build the sequence index: {msg}")
    return SequenceIndex.load(cache)
