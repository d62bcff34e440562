"""SequenceIndex: a compact columnar index over FASTA and FASTQ files, and the one parser.

One row per record, in input order (files in the order given, records in file
order)::

    file_idx     int32   which entry of ``files`` holds the record
    offset       int64   byte offset of the record's sequence (after the header line)
    nbytes       int64   bytes to read from ``offset`` (FASTA: the sequence lines, newlines
                         included; FASTQ: the sequence line without its newline)
    length       int64   sequence letters (ASCII whitespace excluded)
    header_line  int64   1-based line number of the record's header (for messages)
    content_hash [N, 2] uint64  blake2b-128 of the normalised sequence (whitespace removed,
                         upper-cased): equal sequences have equal hashes (``representatives``)
    ids          first word of the header (stored as one UTF-8 blob with offsets)
    mate         int8    0: a single read; 1 or 2: that mate of a pair (see data/inputs.py)
    sample       int32   the record's sample (into ``samples``)

and per file: ``file_format`` (``'fasta'`` or ``'fastq'``, from the content: the first
non-blank byte is ``>`` or ``@``) and ``file_letter_counts`` (a 256-bin histogram of
the bytes of sequence lines; headers, FASTQ ``+``/quality lines and whitespace
excluded), from which :mod:`virnucdist.data.alphabet` tells DNA from protein.

Reading record ``i`` is one positional read (``os.pread``) of ``nbytes`` bytes and a
whitespace strip. FASTQ qualities are checked while indexing (as many as letters) and
never read again. :func:`iter_records` (behind :func:`virnucdist.data.fasta.read_fasta`)
walks the same index, so there is one set of parsing rules and error messages.

Building scans each file once, in binary blocks, with numpy doing the per-byte work
(newline and header positions, whitespace counts, the letter histogram) and
``hashlib`` hashing the same blocks (the file fingerprint) and each record's
normalised sequence (the content hash), so neither costs an extra pass. The columns are
written as they are scanned and streamed into the index directory (:mod:`virnucdist.data.build`):
the build's memory is bounded (about 25 bytes per record plus a constant), not the index's size.

Gzip inputs (recognised by magic bytes; multi-member and BGZF included) are read where
they are: the scan records seek points every few MB (:mod:`virnucdist.data.gzseek`) and a
read inflates from the nearest one, so a process decompresses only the part it reads and
no decompressed copy is written anywhere. ``files`` and ``sources`` are the input paths.

On disk the index is a directory of memory-mapped columns (:mod:`virnucdist.data.store`).

The fingerprint is a sha256 over the *contents* of the inputs (decompressed for
gzip), in input order; never over paths or modification times.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .fasta import WHITESPACE, FastaError, FastaRecord
from .gzseek import GzipPoints, GzipReader
from .parallel import default_workers
from .inputs import as_inputs
from .store import COLUMNS, FORMAT_VERSION, IdColumn, load_dir, save_dir  # noqa: F401
from .scan import _BOM, BLOCK_SIZE, HASH_BYTES, PathLike, detect_format

__all__ = ["SequenceIndex", "quick_identity", "iter_records", "read_fasta", "detect_format"]

log = logging.getLogger(__name__)

_MAX_OPEN_FILES = 128


def quick_identity(paths: Iterable[PathLike]) -> list[list]:
    """``[abs path, size, mtime_ns]`` per input: the cheap "did anything change" check."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([os.path.abspath(p), int(st.st_size), int(st.st_mtime_ns)])
    return out


# ----------------------------------------------------------------------------- index


class SequenceIndex:
    """Columnar index of FASTA/FASTQ records; see the module docstring.

    Picklable: open file descriptors are dropped on pickling and reopened lazily
    in each process (also after a plain ``fork``), and reads use ``os.pread``
    (no shared file position), so it is safe inside DataLoader workers.
    """

    def __init__(self, files: Sequence[str], file_idx: np.ndarray, offset: np.ndarray,
                 nbytes: np.ndarray, length: np.ndarray, ids: list[str] | None = None, *,
                 ids_blob: bytes | None = None, header_line: np.ndarray | None = None,
                 sources: Sequence[str] | None = None, fingerprint: str = "",
                 file_digests: Sequence[str] | None = None, file_sizes: Sequence[int] | None = None,
                 identity: list | None = None, content_hash: np.ndarray | None = None,
                 file_letter_counts: np.ndarray | None = None, file_format: Sequence[str] | None = None,
                 mate: np.ndarray | None = None, sample: np.ndarray | None = None,
                 samples: Sequence | None = None, input_spec: list | None = None,
                 gz: dict[int, GzipPoints] | None = None):
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
        self._ids = ids if isinstance(ids, (list, IdColumn)) or ids is None else list(ids)
        self._store: str | None = None          # the directory a loaded index maps
        self._owner = None                      # a built index: its temporary directory (data/build.py)
        #: per gzip input (by file number): its seek points; read in place through GzipReader
        self.gz: dict[int, GzipPoints] = dict(gz or {})
        self._gzr: dict[int, GzipReader] = {}
        self._ids_blob = ids_blob
        self.fingerprint = fingerprint
        self.file_digests = list(file_digests or [])
        self.file_sizes = [int(s) for s in (file_sizes or [])]
        self.identity = identity or []
        self.file_format = [str(f) for f in (file_format or ["fasta"] * len(self.files))]
        counts = np.asarray(file_letter_counts if file_letter_counts is not None else [], dtype=np.int64)
        self.file_letter_counts = (counts.reshape(-1, 256)
                                   if counts.size and len(counts.reshape(-1, 256)) == len(self.files) else None)
        self._content_hash = (np.asarray(content_hash, dtype=np.uint64).reshape(-1, 2)
                              if content_hash is not None else None)
        n = len(self.offset)
        #: per record: 0 single, 1 or 2 the mate of a pair; the sample number (into ``samples``)
        self.mate = np.asarray(mate, dtype=np.int8) if mate is not None else np.zeros(n, np.int8)
        self.sample = np.asarray(sample, dtype=np.int32) if sample is not None else np.zeros(n, np.int32)
        self.samples = list(samples) if samples is not None else [None]
        self.input_spec = [list(x) for x in input_spec] if input_spec else [[None, None, False]] * len(self.files)
        self._reps: np.ndarray | None = None
        self._pos: dict[str, int] | None = None
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        for name in ("file_idx", "nbytes", "length", "header_line", "mate", "sample"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"SequenceIndex column {name} has {len(getattr(self, name))} rows, expected {n}")
        if self._content_hash is not None and len(self._content_hash) != n:
            raise ValueError(f"SequenceIndex content_hash has {len(self._content_hash)} rows, expected {n}")

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, paths, *, gzip_dir: PathLike | None = None, block_size: int = BLOCK_SIZE,
              progress: Callable[[int], None] | None = None, interleaved: bool = False,
              workers: int | None = None, min_range: int | None = None,
              spool_dir: PathLike | None = None) -> "SequenceIndex":
        """Scan ``paths`` (FASTA or FASTQ, plain or gzip; told apart by content) and return the index.

        ``paths``: paths or :class:`~virnucdist.data.inputs.InputFile` (sample, mate,
        interleaved); the two files of a read pair are recognised from their ids and
        their records stored interleaved as ``{id}/1``, ``{id}/2`` (see
        :mod:`virnucdist.data.inputs`); ``interleaved`` applies to plain paths.
        Gzip inputs are read in place (``gzip_dir`` is accepted for compatibility and
        unused: nothing is decompressed to disk). Raises
        :class:`FastaError` for malformed input and for duplicate ids (naming both
        occurrences). Records with an empty sequence are kept with ``length == 0``.
        ``progress(nbytes)`` is called as the (decompressed) inputs are scanned.
        ``workers`` (default: the CPUs, at most 16): processes scanning files, and byte ranges of
        a large plain file (:mod:`virnucdist.data.parallel`); the index is the same byte for byte.
        The index is written while it is built, in bounded memory (:mod:`virnucdist.data.build`), into
        a temporary directory in ``spool_dir`` (default: the system's temp directory), removed with the
        index unless :meth:`save` moves it into place.
        """
        from .build import build_index
        specs = as_inputs(paths, interleaved)
        paths = [f.path for f in specs]
        if not paths:
            raise ValueError("SequenceIndex.build: no input files given")
        for p in paths:
            if os.path.isdir(p):
                raise FastaError(p, None, "is a directory, not a FASTA or FASTQ file")
            if not os.path.exists(p):
                raise FastaError(p, None, "file not found; check the path")
        return build_index(cls, specs, quick_identity(paths), block_size=block_size, progress=progress,
                           workers=default_workers() if workers is None else workers,
                           min_range=min_range, spool_dir=spool_dir)

    def _multi_sample(self) -> bool:
        return len(self.samples) > 1

    # ------------------------------------------------------------------ access

    def __len__(self) -> int:
        return len(self.offset)

    def __repr__(self) -> str:
        return (f"SequenceIndex({len(self)} records, {len(self.files)} files, "
                f"fingerprint={self.fingerprint[:12]})")

    @property
    def ids(self) -> Sequence[str]:
        """The ids in row order: a list, or for a loaded index an :class:`~virnucdist.data.store.IdColumn`
        (decoded on demand: ``ids[i]`` touches one id)."""
        if self._ids is None:
            blob = self._ids_blob or b""
            self._ids = blob.decode("utf-8").split("\n") if len(self) else []
        return self._ids

    def _blob(self) -> bytes:
        if self._ids_blob is None:
            self._ids_blob = "\n".join(self._ids or []).encode("utf-8")
        return self._ids_blob

    def position(self, rid: str, sample: str | int | None = None) -> int:
        """Row of record ``rid``; raises KeyError naming the id when absent. When the index holds
        several samples, ids are unique per sample: ``sample`` (a name or number) says which; without
        it, an id found in more than one sample is a KeyError naming them."""
        multi = self._multi_sample()
        if self._pos is None:
            ids = self.ids
            keys = zip(np.asarray(self.sample).tolist(), ids) if multi else ids
            self._pos = dict(zip(keys, range(len(ids))))
        if not multi:
            if rid in self._pos:
                return self._pos[rid]
            raise KeyError(f"sequence id {rid!r} is not in the index")
        if sample is not None:
            k = sample if isinstance(sample, (int, np.integer)) else (
                self.samples.index(sample) if sample in self.samples else -1)
            if (int(k), rid) in self._pos:
                return self._pos[(int(k), rid)]
            raise KeyError(f"sequence id {rid!r} is not in sample {sample!r} of the index")
        hits = [(k, self._pos[(k, rid)]) for k in range(len(self.samples)) if (k, rid) in self._pos]
        if len(hits) == 1:
            return hits[0][1]
        if not hits:
            raise KeyError(f"sequence id {rid!r} is not in the index")
        raise KeyError(f"sequence id {rid!r} is in {len(hits)} samples "
                       f"({', '.join(repr(self.samples[k]) for k, _ in hits)}); say which sample")

    def where(self, i: int) -> str:
        """Human-readable location of record ``i``: source file, header line, record number."""
        f = int(self.file_idx[i])
        if self.mate[i] == 0:                   # a file's records are contiguous unless paired
            k = i - int(np.searchsorted(self.file_idx, f, side="left"))
        else:
            k = int(np.count_nonzero(np.asarray(self.file_idx[:i]) == f))
        return (f"{self.sources[f]}, line {int(self.header_line[i])} "
                f"(record {k + 1} of that file)")

    # ------------------------------------------------------------------ content

    @property
    def content_hash(self) -> np.ndarray:
        """``[N, 2]`` uint64: a 128-bit hash (blake2b) of each record's normalised sequence
        (ASCII whitespace removed, upper-cased); the 16 digest bytes, little-endian words.
        Equal for equal sequences whatever their case, line wrapping, CRLF or format."""
        if self._content_hash is None:         # an index made without one: hash the records
            self._content_hash = np.frombuffer(b"".join(
                hashlib.blake2b(self.read_bytes(i).upper(), digest_size=HASH_BYTES).digest()
                for i in range(len(self))), dtype="<u8").reshape(-1, 2).copy()
        return self._content_hash

    def representatives(self) -> np.ndarray:
        """int64 ``[N]``: for each record, the first record (lowest row) with the same
        normalised sequence; ``rep[i] == i`` for a first occurrence. Vectorised (a stable
        sort of the hashes, :func:`virnucdist.data.build.representatives`, as the build
        computes them); cached."""
        if self._reps is None:
            from .build import representatives

            h = np.asarray(self.content_hash)
            self._reps = representatives([np.ascontiguousarray(h[:, 0])], np.ascontiguousarray(h[:, 1]))
        return self._reps

    @property
    def letter_counts(self) -> np.ndarray:
        """int64 ``[256]``: how often each byte occurs in the sequences of all files
        (headers, FASTQ '+' and quality lines, whitespace excluded; case kept)."""
        if self.file_letter_counts is None:
            raise ValueError("this SequenceIndex was made without letter counts; build it from the files")
        return self.file_letter_counts.sum(axis=0)

    def records(self) -> Iterator[FastaRecord]:
        """Every record as :class:`~virnucdist.data.fasta.FastaRecord` (id, whole header line
        without its marker, sequence), in input order; reads the files sequentially."""
        ids = self.ids
        maps: dict[int, tuple] = {}
        prev: dict[int, int] = {}
        try:
            for i in range(len(self)):
                f = int(self.file_idx[i])
                if self.file_format[f] == "bam":
                    yield FastaRecord(ids[i], ids[i], self.read(i))
                    continue
                if f not in maps and f in self.gz:
                    maps[f] = (None, GzipReader(self.files[f], self.gz[f]))
                elif f not in maps:
                    fh = open(self.files[f], "rb")
                    maps[f] = (fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if self.file_sizes[f] else b"")
                mm = maps[f][1]
                off, size = int(self.offset[i]), int(self.nbytes[i])
                head = mm[prev.get(f, 0):off].rstrip(b"\r\n")  # ends with the header line (and its newline)
                line = head[max(head.rfind(b"\n"), head.rfind(b"\r")) + 1:]   # CR-only files too
                if f not in prev and line.startswith(_BOM):
                    line = line[len(_BOM):]
                seq = mm[off:off + size].translate(None, WHITESPACE)
                if len(seq) != self.length[i]:
                    raise RuntimeError(f"{self.sources[f]} changed after the sequence index was "
                                       f"built (record {ids[i]!r}); index it again")
                yield FastaRecord(ids[i], line[1:].decode("utf-8", "backslashreplace"), seq.decode("ascii"))
                prev[f] = off + size
        finally:
            for fh, mm in maps.values():
                if fh is not None:
                    if not isinstance(mm, bytes):
                        mm.close()
                    fh.close()

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

    def _gz_reader(self, f: int) -> GzipReader:
        r = self._gzr.get(f)
        if r is None:
            r = self._gzr[f] = GzipReader(self.files[f], self.gz[f])
        return r

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
        if f in self.gz:
            data = self._gz_reader(f).read(off, size)
        elif self.file_format[f] == "bam":
            from .bam import read_bam
            data = read_bam(self.files[f], off).encode("ascii")
        else:
            data = _pread(self._fd(f), size, off)
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
        if self._store is not None:     # a saved index: the other process maps the same files
            return {"_store": self._store}
        state = self.__dict__.copy()
        state["_ids_blob"] = self._blob()
        state["_ids"] = None            # the blob pickles much faster than a list of str
        state["_pos"] = None
        state["_fds"] = {}
        state["_gzr"] = {}
        state["_reps"] = None
        state["_owner"] = None
        return state

    def __setstate__(self, state):
        if set(state) == {"_store"}:
            self.__dict__.update(SequenceIndex.load(state["_store"]).__dict__)
            self._fds = {}
            return
        self.__dict__.update(state)
        self._fds = {}
        self._gzr = {}
        self._pid = os.getpid()

    # ------------------------------------------------------------------ persistence

    def save(self, path: PathLike) -> None:
        """Write the index directory ``path`` (see :mod:`virnucdist.data.store`), atomically; a built
        index is moved there from its temporary directory (renamed: no copy on one file system)."""
        from .build import meta_of
        if self._owner is not None:
            owner, self._owner = self._owner, None
            path = os.path.abspath(os.fspath(path))
            owner.install(self._store, path)
            self._store = path
            return
        meta = meta_of(self)
        cols = {name: getattr(self, name) for name in COLUMNS}
        cols["content_hash"] = self.content_hash
        cols["representatives"] = self.representatives()
        if self.file_letter_counts is not None:
            cols["letter_counts"] = self.file_letter_counts
        ids = self._ids if self._ids is not None else self.ids
        save_dir(os.fspath(path), meta, cols, ids, {f"gzip-{f}.npz": p.to_bytes() for f, p in self.gz.items()})

    @classmethod
    def load(cls, path: PathLike, *, expected_fingerprint: str | None = None) -> "SequenceIndex":
        """Open a saved index (columns memory-mapped); ValueError if ``expected_fingerprint`` is
        given and differs, or for an index of an older format."""
        path = os.path.abspath(os.fspath(path))
        meta, cols, ids = load_dir(path)
        index = cls(meta["files"], cols["file_idx"], cols["offset"], cols["nbytes"], cols["length"], ids,
                    header_line=cols["header_line"], sources=meta["sources"], fingerprint=meta["fingerprint"],
                    file_digests=meta["file_digests"], file_sizes=meta["file_sizes"],
                    identity=meta["identity"], content_hash=cols["content_hash"],
                    file_letter_counts=cols.get("letter_counts"), file_format=meta["file_format"],
                    mate=cols["mate"], sample=cols["sample"], samples=meta.get("samples"),
                    input_spec=meta.get("input_spec"),
                    gz={f: GzipPoints.from_file(os.path.join(path, f"gzip-{f}.npz")) for f in meta.get("gzip", [])})
        index._reps = cols.get("representatives")
        index._store = path
        if expected_fingerprint is not None and index.fingerprint != expected_fingerprint:
            raise ValueError(
                f"{path}: index was built from different inputs (fingerprint "
                f"{index.fingerprint[:12]}, expected {expected_fingerprint[:12]}); "
                "delete it to rebuild")
        return index

    @classmethod
    def load_or_build(cls, paths, cache_path: PathLike, *,
                      gzip_dir: PathLike | None = None, expected_fingerprint: str | None = None,
                      progress: Callable[[int], None] | None = None,
                      interleaved: bool = False) -> "SequenceIndex":
        """Load ``cache_path`` when the inputs' quick identity (path, size, mtime) is
        unchanged (and decompressed copies are intact), else build and save it.

        ``gzip_dir`` is unused (gzip inputs are read in place). ``expected_fingerprint``,
        when given, must match the cache, otherwise it is rebuilt (and if the
        rebuilt index still differs, the caller gets the new one: check
        ``.fingerprint`` if the difference matters, e.g. on resume).
        """
        paths = as_inputs(paths, interleaved)
        cache_path = os.fspath(cache_path)
        cached = cls.load_if_fresh(cache_path, paths, expected_fingerprint=expected_fingerprint)
        if cached is not None:
            return cached
        index = cls.build(paths, progress=progress, spool_dir=os.path.dirname(os.path.abspath(cache_path)))
        index.save(cache_path)
        return index

    @classmethod
    def load_if_fresh(cls, cache_path: PathLike, paths, *, expected_fingerprint: str | None = None,
                      interleaved: bool = False) -> "SequenceIndex | None":
        """The index saved at ``cache_path`` when it was built from these inputs (same paths, sizes,
        modification times, samples and mates; ``expected_fingerprint`` if given), else None (nothing
        there, or the reason it is stale logged). The one cache check (also of a run's ``OUTDIR/index``)."""
        cache_path = os.fspath(cache_path)
        if not os.path.exists(cache_path):
            return None
        try:
            cached = cls.load(cache_path)
            reason = cached._stale_reason(paths, expected_fingerprint, interleaved)
        except (OSError, ValueError, KeyError) as err:
            cached, reason = None, f"unreadable cache ({err})"
        if reason is None:
            return cached
        log.info("rebuilding sequence index %s: %s", cache_path, reason)
        return None

    def _stale_reason(self, paths, expected_fingerprint: str | None, interleaved: bool = False) -> str | None:
        specs = as_inputs(paths, interleaved)
        try:
            current = quick_identity([f.path for f in specs])
        except OSError as err:
            return str(err)
        if current != self.identity:
            return "inputs changed (size or modification time)"
        if [f.spec() for f in specs] != self.input_spec:
            return "samples, mates or interleaving changed"
        if expected_fingerprint is not None and expected_fingerprint != self.fingerprint:
            return "fingerprint differs from the expected one"
        for k, (f, size) in enumerate(zip(self.files, self.file_sizes)):
            plain = k not in self.gz and self.file_format[k] != "bam"
            if not os.path.exists(f) or (plain and os.path.getsize(f) != size):
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


def iter_records(path: PathLike) -> Iterator[FastaRecord]:
    """Records of one FASTA or FASTQ file (plain or gzip, read in place), through the index's
    scanner: what :func:`virnucdist.data.fasta.read_fasta` returns."""
    index = SequenceIndex.build([path])
    try:
        yield from index.records()
    finally:
        index.close()


def read_fasta(path: PathLike) -> Iterator[FastaRecord]:
    """Yield the records of a FASTA or FASTQ file (plain or gzip) in file order.

    The file is indexed first (:meth:`SequenceIndex.build`, the one parser; a gzip input is read
    in place), so a malformed file raises :class:`FastaError` before the first record is yielded,
    with the same message the index gives; duplicate ids are an error, as in a run.
    A record with an empty sequence is yielded with ``seq == ""``.
    """
    return iter_records(path)
