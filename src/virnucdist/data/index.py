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
    ids          list[str]  first word of the header (stored as one UTF-8 blob)

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
normalised sequence (the content hash), so neither costs an extra pass.

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

import gzip
import hashlib
import json
import logging
import mmap
import os
import tempfile
import zlib
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .._testhooks import test_hook
from .fasta import WHITESPACE, FastaError, FastaRecord, is_gzip

__all__ = ["SequenceIndex", "quick_identity", "iter_records", "detect_format"]

log = logging.getLogger(__name__)

#: 2: FASTQ, per-record content hashes, per-file letter counts and formats.
FORMAT_VERSION = 2
BLOCK_SIZE = 64 << 20
HASH_BYTES = 16
_MAX_OPEN_FILES = 128
_OTHER_WS = (b" ", b"\t", b"\r", b"\v", b"\f")
_BOM = b"\xef\xbb\xbf"
_UPPER = bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HIST_STEP = 1 << 20

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
    """Per-file result of :func:`_scan_file` (byte offsets within the file)."""

    def __init__(self, fmt, offset, nbytes, length, header_line, ids, content_hash, counts, digest, size):
        self.fmt = fmt
        self.offset = offset
        self.nbytes = nbytes
        self.length = length
        self.header_line = header_line
        self.ids = ids
        self.content_hash = content_hash
        self.counts = counts
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


def detect_format(path: PathLike) -> str:
    """``'fastq'`` when the first non-blank byte of a (plain) file is ``@``, else ``'fasta'``.

    Only the content decides, never the name; an empty or blank file is ``'fasta'``
    (whose scanner words the error).
    """
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
        if head.startswith(_BOM):
            head = head[len(_BOM):]
        while True:
            rest = head.lstrip(WHITESPACE)
            if rest:
                return "fastq" if rest[:1] == b"@" else "fasta"
            head = fh.read(1 << 16)
            if not head:
                return "fasta"


def _scan_file(path: str, shown: str, block_size: int = BLOCK_SIZE,
               progress: Callable[[int], None] | None = None) -> _FileScan:
    """Index one plain FASTA or FASTQ file; ``shown`` is the name used in error messages."""
    if detect_format(path) == "fastq":
        return _scan_fastq_file(path, shown, block_size, progress)
    return _scan_fasta_file(path, shown, block_size, progress)


class _Content:
    """Content hashes of the normalised sequences and the letter histogram of one file.

    The normalised sequence is the record's sequence with ASCII whitespace removed and
    upper-cased; its hash is blake2b with a 16-byte digest. The histogram counts the
    bytes of sequence lines (headers, FASTQ '+' and quality lines, whitespace excluded).
    """

    def __init__(self):
        self.digests: list[bytes] = []
        self.counts = np.zeros(256, dtype=np.int64)
        self.pending = None          # hasher of a FASTA record that goes on in the next chunk

    def add(self, lead: bytes, slices: list[bytes], clean: np.ndarray, tail: bytes | None) -> None:
        """One FASTA chunk: ``lead`` continues the pending record, ``slices`` are complete
        records (``clean[i]``: no whitespace in ``slices[i]``), ``tail`` starts a pending
        record (None: the chunk has no header, so the pending record goes on)."""
        if lead and self.pending is not None:
            self.pending.update(lead.translate(_UPPER, WHITESPACE))
        if tail is None:
            self.counts += _histogram(lead)
            return
        if self.pending is not None:
            self.digests.append(self.pending.digest())
        self.records([lead, *slices, tail], slices, clean)
        self.pending = hashlib.blake2b(tail.translate(_UPPER, WHITESPACE), digest_size=HASH_BYTES)

    def records(self, pieces: list[bytes], slices: list[bytes], clean: np.ndarray) -> None:
        """Count the letters of ``pieces`` and hash the complete records ``slices``."""
        c = _histogram(b"".join(pieces))
        self.counts += c
        if not len(slices):
            return
        if c[97:123].any():                           # lowercase in this chunk
            slices = [s.translate(_UPPER, WHITESPACE) for s in slices]
        elif not clean.all():
            slices = list(slices)
            for i in np.flatnonzero(~clean).tolist():
                slices[i] = slices[i].translate(_UPPER, WHITESPACE)
        b2 = hashlib.blake2b
        self.digests.extend([b2(s, digest_size=HASH_BYTES).digest() for s in slices])

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        if self.pending is not None:
            self.digests.append(self.pending.digest())
            self.pending = None
        self.counts[list(WHITESPACE)] = 0
        blob = b"".join(self.digests)
        return np.frombuffer(blob, dtype="<u8").reshape(-1, 2).copy(), self.counts


def _histogram(data: bytes) -> np.ndarray:
    """256-bin byte histogram; bincount over byte pairs (uint16) is ~2x faster than over bytes."""
    n = len(data)
    out = np.zeros(256, dtype=np.int64)
    if n >= 2:
        a16 = np.frombuffer(data, dtype=np.uint16, count=n // 2)
        pairs = np.zeros(1 << 16, dtype=np.int64)
        for i in range(0, len(a16), _HIST_STEP):      # bounded temporaries (bincount makes intp)
            pairs += np.bincount(a16[i:i + _HIST_STEP], minlength=1 << 16)
        pairs = pairs.reshape(256, 256)
        out += pairs.sum(axis=0) + pairs.sum(axis=1)
    if n & 1:
        out[data[-1]] += 1
    return out


def _check_nul(buf: bytes, n: int, lines_before: int, shown: str, what: str) -> None:
    pos = buf.find(b"\x00", 0, n)
    if pos >= 0:
        raise FastaError(
            shown, _line_of(buf, pos, lines_before),
            f"binary data (NUL byte); this is not a text {what} file "
            "(compressed with something other than gzip? corrupted?)",
        )


def _other_ws(buf: bytes, arr: np.ndarray, n: int) -> np.ndarray:
    """Sorted positions of whitespace other than newline in ``buf[:n]``."""
    present = [c for c in _OTHER_WS if buf.find(c, 0, n) >= 0]
    if not present:
        return np.empty(0, dtype=np.int64)
    mask = arr[:n] == present[0][0]
    for c in present[1:]:
        mask |= arr[:n] == c[0]
    return np.flatnonzero(mask)


def _header_ids(buf: bytes, id_start: np.ndarray, line_end: np.ndarray, ows: np.ndarray,
                hline: np.ndarray, n: int, shown: str, marker: str) -> list[str]:
    """First word of each header line ``buf[id_start:line_end]`` (after the marker)."""
    id_end = line_end.copy()
    if len(ows):
        j = np.searchsorted(ows, id_start)
        nxt = np.where(j < len(ows), ows[np.minimum(j, len(ows) - 1)], n)
        id_end = np.minimum(id_end, nxt)
    slices = [buf[a:b] for a, b in zip(id_start.tolist(), id_end.tolist())]
    for i in np.flatnonzero(id_end <= id_start).tolist():   # rare: '>' alone or '>  id'
        words = buf[int(id_start[i]):int(line_end[i])].split(None, 1)
        if not words:
            raise FastaError(shown, int(hline[i]), f"empty header: '{marker}' must be followed by "
                                                   f"a sequence id (e.g. '{marker}read_1')")
        slices[i] = words[0]
    try:
        return b"\n".join(slices).decode("utf-8").split("\n") if slices else []
    except UnicodeDecodeError:
        for i, s in enumerate(slices):
            try:
                s.decode("utf-8")
            except UnicodeDecodeError:
                raise FastaError(shown, int(hline[i]),
                                 "header is not valid UTF-8 text; this looks like a binary or "
                                 "corrupted file") from None
        raise


def _non_ascii_error(buf: bytes, pos: int, line: int, shown: str, what: str) -> FastaError:
    start = buf.rfind(b"\n", 0, pos) + 1
    end = buf.find(b"\n", pos)
    try:
        buf[start:end if end >= 0 else len(buf)].decode("utf-8")
    except UnicodeDecodeError:
        return FastaError(shown, line, "not valid UTF-8 text; this looks like a binary or "
                                       f"corrupted file, not {what}")
    return FastaError(shown, line, f"non-ASCII character in sequence line {_line_text(buf, pos)}; "
                                   "sequences must be plain ASCII letters")


# ------------------------------------------------------------------ FASTA


def _scan_fasta_file(path: str, shown: str, block_size: int,
                     progress: Callable[[int], None] | None) -> _FileScan:
    sha = hashlib.sha256()
    content = _Content()
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
            res = _scan_fasta_chunk(buf, n, base, ws_before, lines_before, seen_header, shown)
            (H, off, C_H, C_off, hline, ids, nws, nnl, pieces) = res
            if len(H):
                seen_header = True
                parts.append((H, off, C_H, C_off, hline, ids))
            if seen_header:
                content.add(*pieces)
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
    hashes, counts = content.finish()
    return _FileScan("fasta", off, nbytes, length, hline, ids, hashes, counts, sha.hexdigest(), size)


def _scan_fasta_chunk(buf: bytes, n: int, base: int, ws_before: int, lines_before: int,
                      seen_header: bool, shown: str):
    """Scan ``buf[:n]``, which starts at a line start and ends at a line end (or EOF).

    Returns global arrays for the headers in the chunk, the chunk's whitespace and
    newline counts (``C`` values are "whitespace bytes before this position"), and the
    sequence pieces for :meth:`_Content.add`.
    """
    _check_nul(buf, n, lines_before, shown, "FASTA")
    arr = np.frombuffer(buf, dtype=np.uint8, count=n)
    nl = np.flatnonzero(arr == 10)
    ows = _other_ws(buf, arr, n)

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
            try:
                buf[pos:buf.find(b"\n", pos) if buf.find(b"\n", pos) >= 0 else n].decode("utf-8")
            except UnicodeDecodeError:
                raise FastaError(shown, _line_of(buf, pos, lines_before),
                                 "not valid UTF-8 text; this looks like a binary or corrupted "
                                 "file, not FASTA") from None
            raise FastaError(
                shown, _line_of(buf, pos, lines_before),
                f"expected a FASTA header line starting with '>', found {text}; "
                "is this a FASTA file? (FASTQ records start with '@')",
            )

    k = np.searchsorted(nl, H)                # newlines before each header
    has_nl = k < len(nl)
    E = np.where(has_nl, nl[np.minimum(k, max(len(nl) - 1, 0))] if len(nl) else n, n)
    off = np.where(has_nl, E + 1, n)
    C_H = k + np.searchsorted(ows, H)
    C_off = np.searchsorted(nl, off) + np.searchsorted(ows, off)
    hline = lines_before + k + 1
    ids = _header_ids(buf, H + 1, E, ows, hline, n, shown, ">")

    if n and int(arr.max()) >= 128:
        _check_high_bytes(buf, arr, nl, H, E, hline, lines_before, shown, first)

    # sequence pieces: the end of the pending record, complete records, the start of the last one
    if len(H):
        lead = buf[:int(H[0])] if seen_header else b""
        so, ends = off[:-1], H[1:]
        ws = C_H[1:] - C_off[:-1]
        # one line, ending with its newline: the letters are [so, ends - 1)
        clean = (ends == so) | ((ws == 1) & (arr[np.maximum(ends - 1, 0)] == 10))
        stop = np.where(clean, ends - ws, ends)
        slices = [buf[a:b] for a, b in zip(so.tolist(), stop.tolist())]
        pieces = (lead, slices, clean, buf[int(off[-1]):n])
    else:
        pieces = (buf[:n], [], np.ones(0, dtype=bool), None)

    return (base + H, base + off, ws_before + C_H, ws_before + C_off, hline, ids,
            len(nl) + len(ows), len(nl), pieces)


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
        raise _non_ascii_error(buf, pos, line, shown, "FASTA")
    for r in np.unique(kk[in_hdr]).tolist():
        try:
            buf[int(H[r]) + 1:int(E[r])].decode("utf-8")
        except UnicodeDecodeError:
            raise FastaError(shown, int(hline[r]), "header is not valid UTF-8 text; this looks "
                                                   "like a binary or corrupted file") from None


# ------------------------------------------------------------------ FASTQ


def _scan_fastq_file(path: str, shown: str, block_size: int,
                     progress: Callable[[int], None] | None) -> _FileScan:
    """4-line FASTQ records (header, sequence, '+', quality); chunks end at record ends."""
    sha = hashlib.sha256()
    content = _Content()
    parts: list[tuple] = []     # per chunk: (off, nbytes, length, hline, ids)
    size = 0
    base = 0                    # file offset of buf[0]
    lines_before = 0            # newlines before buf[0]
    carry = b""
    started = False
    with open(path, "rb", buffering=0) as fh:
        while True:
            block = fh.read(block_size)
            if progress is not None:
                progress(len(block))
            final = not block
            if block:
                sha.update(block)
                size += len(block)
                buf = carry + block if carry else block
            else:
                buf = carry
            if not started:       # skip a byte-order mark and blank lines before the first record
                p = len(_BOM) if buf.startswith(_BOM) else 0
                q = len(buf) - len(buf[p:].lstrip(WHITESPACE))
                if not final and buf.find(b"\n", q) < 0:     # the first header line is incomplete
                    carry = buf
                    continue
                started = True
                if q < len(buf) and max(buf.rfind(b"\n", 0, q) + 1, p) != q:
                    raise FastaError(shown, _line_of(buf, q, 0),
                                     f"expected a FASTQ header line starting with '@', found "
                                     f"{_line_text(buf, q)}")
                lines_before = buf.count(b"\n", 0, q)
                base = q
                buf = buf[q:]
            res, used, used_lines = _scan_fastq_chunk(buf, final, base, lines_before, shown)
            if res is not None:
                parts.append(res[:5])
                content.records(res[5], res[5], res[6])
            carry = buf[used:]
            base += used
            lines_before += used_lines
            if final:
                break
    if not parts:
        raise FastaError(shown, max(lines_before, 1),
                         "no FASTQ records; expected 4-line records (header '@id', sequence, '+', quality)")
    off, nbytes, length, hline = (np.concatenate([p[i] for p in parts]) for i in range(4))
    ids: list[str] = [x for p in parts for x in p[4]] if len(parts) > 1 else parts[0][4]
    hashes, counts = content.finish()
    return _FileScan("fastq", off, nbytes, length, hline, ids, hashes, counts, sha.hexdigest(), size)


_FASTQ_SHAPE = "FASTQ records are 4 lines: '@id', sequence, '+', quality"


def _scan_fastq_chunk(buf: bytes, final: bool, base: int, lines_before: int, shown: str):
    """Scan the complete records at the start of ``buf`` (which starts at a header line).

    Returns ``(result or None, bytes used, lines used)``; what is not used (an
    incomplete record, or blank lines that may be the end of the file) is carried
    into the next chunk. ``final``: ``buf`` is the end of the file.
    """
    N = len(buf)
    if N == 0:
        return None, 0, 0
    _check_nul(buf, N, lines_before, shown, "FASTQ")
    arr = np.frombuffer(buf, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    if final and arr[-1] != 10:
        ends = np.append(ends, N)              # the last line has no newline
    L = len(ends)
    starts = np.empty(L, dtype=np.int64)
    if L:
        starts[0] = 0
        starts[1:] = ends[:-1] + 1

    def line_no(i: int) -> int:
        return lines_before + i + 1

    def rid(j: int) -> str:
        words = buf[int(starts[4 * j]) + 1:int(ends[4 * j])].split(None, 1)
        return repr(words[0].decode("utf-8", errors="replace")) if words else "''"

    errors: list[tuple[int, str]] = []         # (line index, message): the first one is raised
    if final:
        m = L
        while m and not buf[int(starts[m - 1]):int(ends[m - 1])].strip(WHITESPACE):
            m -= 1                             # blank lines at the end of the file
        k = -(-m // 4)
        if m % 4 in (1, 2) and arr[starts[4 * k - 4]] == 64:
            missing = "its sequence line" if m % 4 == 1 else "its '+' line"
            errors.append((4 * k - 4, f"truncated FASTQ record {rid(k - 1)} (header at line {line_no(4 * k - 4)}): "
                              f"the file ends before {missing}; the file looks cut short: re-download it "
                              "or remove the partial record"))
        # a missing last quality line is an empty one (an empty record, or a length mismatch below)
        starts = np.concatenate([starts[:m], np.full(4 * k - m, N, dtype=np.int64)])
        ends = np.concatenate([ends[:m], np.full(4 * k - m, N, dtype=np.int64)])
    else:
        k = L // 4
    hs, he = starts[0:4 * k:4], ends[0:4 * k:4]
    bad = np.flatnonzero(arr[np.minimum(hs, N - 1)] != 64)
    if len(bad) and not final and not buf[int(hs[bad[0]]):].strip(WHITESPACE):
        k = int(bad[0])                        # only blank lines left: maybe the end; carry them
        hs, he, bad = hs[:k], he[:k], bad[:0]
    if len(bad):
        j = int(bad[0])
        errors.append((4 * j, f"expected a FASTQ header line starting with '@', found "
                              f"{_line_text(buf, int(hs[j]))}; {_FASTQ_SHAPE}"))
    ss, se = starts[1:4 * k:4], ends[1:4 * k:4]
    ps = starts[2:4 * k:4]
    qs, qe = starts[3:4 * k:4], ends[3:4 * k:4]
    bad = np.flatnonzero((ps >= N) | (arr[np.minimum(ps, N - 1)] != 43))
    if len(bad):
        j = int(bad[0])
        if ps[j] < N:
            errors.append((4 * j + 2, f"expected the '+' line of record {rid(j)} (header at line "
                                      f"{line_no(4 * j)}), found {_line_text(buf, int(ps[j]))}; "
                                      f"{_FASTQ_SHAPE} (multi-line FASTQ is not supported: rewrap "
                                      "it, e.g. `seqkit seq -w 0`)"))
    used = N if final else (int(ends[4 * k - 1]) + 1 if k else 0)
    ows = _other_ws(buf, arr, used)
    seq_len = (se - ss) - (np.searchsorted(ows, se) - np.searchsorted(ows, ss))
    qual_len = (qe - qs) - (np.searchsorted(ows, qe) - np.searchsorted(ows, qs))
    bad = np.flatnonzero(seq_len != qual_len)
    if len(bad):
        j = int(bad[0])
        errors.append((4 * j + 3, f"record {rid(j)} (header at line {line_no(4 * j)}) has "
                                  f"{int(seq_len[j])} sequence letters but {int(qual_len[j])} quality "
                                  "values; the record is corrupted or cut short: fix or re-download "
                                  "the file"))
    if errors:
        err_line, message = min(errors)
        k_ok = (err_line + 3) // 4             # headers up to the broken line's record
        limit = int(starts[err_line]) if err_line < len(starts) else N
    else:
        k_ok, limit = k, used
    hline = lines_before + 4 * np.arange(k_ok, dtype=np.int64) + 1
    ids = _header_ids(buf, hs[:k_ok] + 1, he[:k_ok], ows, hline, N, shown, "@")
    if limit and int(arr[:limit].max()) >= 128:
        _check_high_bytes_fastq(buf, arr[:limit], ends, lines_before, shown)
    if errors:
        raise FastaError(shown, line_no(err_line), message)
    if k == 0:
        return None, (N if final else 0), 0
    ss, se = ss[:k], se[:k]
    slices = [buf[a:b] for a, b in zip(ss.tolist(), se.tolist())]
    clean = (se - ss) == seq_len
    res = (base + ss, se - ss, seq_len, hline, ids, slices, clean)
    return res, used, 4 * k


def _check_high_bytes_fastq(buf, arr, ends, lines_before, shown):
    """Non-ASCII bytes: allowed in header and '+' lines (if valid UTF-8), never elsewhere."""
    hi = np.flatnonzero(arr >= 128)
    li = np.searchsorted(ends, hi)
    for i in np.unique(li).tolist():
        line = lines_before + i + 1
        start = int(buf.rfind(b"\n", 0, int(hi[np.searchsorted(li, i)])) + 1)
        phase = i % 4
        if phase in (0, 2):
            try:
                buf[start:int(ends[i])].decode("utf-8")
            except UnicodeDecodeError:
                raise FastaError(shown, line, "header is not valid UTF-8 text; this looks like a "
                                              "binary or corrupted file") from None
        elif phase == 1:
            raise _non_ascii_error(buf, int(hi[np.searchsorted(li, i)]), line, shown, "FASTQ")
        else:
            raise FastaError(shown, line, f"non-ASCII character in quality line "
                                          f"{_line_text(buf, start)}; quality values must be ASCII "
                                          "('!' to '~'); the file is corrupted")


def _decompress(src: str, gzip_dir: str) -> str:
    """Decompress ``src`` once into ``gzip_dir``; returns the plain file's path."""
    os.makedirs(gzip_dir, exist_ok=True)
    name = os.path.basename(src)
    if name.endswith(".gz"):
        name = name[:-3]
    tag = hashlib.sha256(src.encode("utf-8")).hexdigest()[:10]
    dst = os.path.abspath(os.path.join(gzip_dir, f"{tag}-{name}"))
    tmp = f"{dst}.tmp{os.getpid()}"
    lines = 0                                  # newlines decompressed so far: where a broken stream ends
    try:
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            while block := fin.read(16 << 20):
                fout.write(block)
                lines += block.count(b"\n")
        os.replace(tmp, dst)
    except (OSError, EOFError, zlib.error) as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, (FileNotFoundError, PermissionError)) and err.filename == tmp:
            raise
        raise FastaError(src, lines + 1, f"corrupt or truncated gzip file ({err}); "
                                         "re-download or recompress it") from None
    return dst


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
                 file_letter_counts: np.ndarray | None = None, file_format: Sequence[str] | None = None):
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
        self.file_format = [str(f) for f in (file_format or ["fasta"] * len(self.files))]
        counts = np.asarray(file_letter_counts if file_letter_counts is not None else [], dtype=np.int64)
        self.file_letter_counts = (counts.reshape(-1, 256)
                                   if counts.size and len(counts.reshape(-1, 256)) == len(self.files) else None)
        self._content_hash = (np.asarray(content_hash, dtype=np.uint64).reshape(-1, 2)
                              if content_hash is not None else None)
        self._reps: np.ndarray | None = None
        self._pos: dict[str, int] | None = None
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        n = len(self.offset)
        for name in ("file_idx", "nbytes", "length", "header_line"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"SequenceIndex column {name} has {len(getattr(self, name))} rows, expected {n}")
        if self._content_hash is not None and len(self._content_hash) != n:
            raise ValueError(f"SequenceIndex content_hash has {len(self._content_hash)} rows, expected {n}")

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, paths: Sequence[PathLike] | PathLike, *, gzip_dir: PathLike | None = None,
              block_size: int = BLOCK_SIZE, progress: Callable[[int], None] | None = None) -> "SequenceIndex":
        """Scan ``paths`` (FASTA or FASTQ, plain or gzip; told apart by content) and return the index.

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
                raise FastaError(p, None, "is a directory, not a FASTA or FASTQ file")
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
                    file_sizes=sizes, identity=identity,
                    content_hash=np.concatenate([s.content_hash for s in scans]),
                    file_letter_counts=np.stack([s.counts for s in scans]),
                    file_format=[s.fmt for s in scans])
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
        sort of the hashes); cached."""
        if self._reps is None:
            h = self.content_hash
            n = len(h)
            order = np.lexsort((h[:, 1], h[:, 0]))      # stable: equal hashes keep row order
            hs = h[order]
            new = np.ones(n, dtype=bool)
            new[1:] = (hs[1:] != hs[:-1]).any(axis=1)
            firsts = order[new]
            reps = np.empty(n, dtype=np.int64)
            reps[order] = firsts[np.cumsum(new) - 1]
            self._reps = reps
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
        bounds = np.searchsorted(self.file_idx, np.arange(len(self.files) + 1))
        for f, path in enumerate(self.files):
            lo, hi = int(bounds[f]), int(bounds[f + 1])
            if lo == hi:
                continue
            with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                prev = 0
                for i in range(lo, hi):
                    off, size = int(self.offset[i]), int(self.nbytes[i])
                    head = mm[prev:off]                # ends with the header line (and its newline)
                    if head.endswith(b"\n"):
                        head = head[:-1]
                    line = head[head.rfind(b"\n") + 1:]
                    if i == lo and line.startswith(_BOM):
                        line = line[len(_BOM):]
                    seq = mm[off:off + size].translate(None, WHITESPACE)
                    if len(seq) != self.length[i]:
                        raise RuntimeError(f"{self.sources[f]} changed after the sequence index was "
                                           f"built (record {ids[i]!r}); index it again")
                    yield FastaRecord(ids[i], line[1:].rstrip(b"\r").decode("utf-8"), seq.decode("ascii"))
                    prev = off + size

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
        state["_reps"] = None
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
            "file_sizes": self.file_sizes, "identity": self.identity, "file_format": self.file_format,
        }
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:
            np.savez(fh, file_idx=self.file_idx, offset=self.offset, nbytes=self.nbytes,
                     length=self.length, header_line=self.header_line,
                     ids_blob=np.frombuffer(self._blob(), dtype=np.uint8),
                     content_hash=self.content_hash, letter_counts=self.file_letter_counts
                     if self.file_letter_counts is not None else np.zeros((0, 256), np.int64),
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
                        identity=meta["identity"], content_hash=z["content_hash"],
                        file_letter_counts=z["letter_counts"], file_format=meta["file_format"])
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


def iter_records(path: PathLike) -> Iterator[FastaRecord]:
    """Records of one FASTA or FASTQ file (plain or gzip), through the index's scanner:
    what :func:`virnucdist.data.fasta.read_fasta` returns. A gzip input is decompressed into a
    temporary directory, removed when the iteration ends."""
    with tempfile.TemporaryDirectory(prefix="virnucdist-read-") as tmp:
        index = SequenceIndex.build([path], gzip_dir=tmp)
        try:
            yield from index.records()
        finally:
            index.close()
