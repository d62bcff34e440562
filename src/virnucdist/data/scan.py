"""The byte scanners: FASTA (and shared helpers); one pass over a file in binary blocks.

numpy does the per-byte work (newline and header positions, whitespace counts, the
letter histogram) and ``hashlib`` hashes the same blocks (the file fingerprint) and
each record's normalised sequence (the content hash), so neither costs an extra pass.
Each chunk's columns are appended to a spool (:mod:`virnucdist.data.spool`) as it is
scanned. The FASTQ scanner is in :mod:`virnucdist.data.fastq`; :mod:`virnucdist.data.build`
puts the per-file results together.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Callable

import numpy as np

from .fasta import WHITESPACE, FastaError
from .spool import Spool
from .store import decode_ids

log = logging.getLogger("virnucdist")

BLOCK_SIZE = 16 << 20      # per-chunk temporaries are a few times this
HASH_BYTES = 16
_OTHER_WS = (b" ", b"\t", b"\r", b"\v", b"\f")
_BOM = b"\xef\xbb\xbf"
_UPPER = bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_HIST_STEP = 1 << 20

PathLike = str | os.PathLike

# ----------------------------------------------------------------------------- scanning


class _FileScan:
    """Per-file result of a scan: its columns in spools (:mod:`virnucdist.data.spool`), one for the
    whole file or one per byte range of it, each with the byte and line shift of its range; the
    letter counts, the digest and size of the file (``mates``: BAM's mate numbers, else None)."""

    def __init__(self, fmt: str, parts: list, counts: np.ndarray, digest: str, size: int, mates=None):
        self.fmt, self.parts, self.counts, self.digest, self.size, self.mates = fmt, parts, counts, digest, size, mates
        self._starts = np.cumsum([0] + [len(sp) for sp, _, _ in parts]).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def _pieces(self, lo: int, hi: int):
        for k, (sp, shift, lines) in enumerate(self.parts):
            a, b = max(lo, self._starts[k]), min(hi, self._starts[k + 1])
            if a < b:
                yield sp, a - self._starts[k], b - self._starts[k], shift, lines

    def read(self, name: str, lo: int, hi: int) -> np.ndarray:
        """Rows ``[lo, hi)`` of column ``name``, offsets and line numbers those of the file."""
        out = []
        for sp, a, b, shift, lines in self._pieces(lo, hi):
            x = sp.read(name, a, b)
            if name == "offset" and shift:
                x += shift
            elif name == "header_line" and lines:
                x += lines
            out.append(x)
        return out[0] if len(out) == 1 else np.concatenate(out) if out else self.parts[0][0].read(name, 0, 0)

    def read_ids(self, lo: int, hi: int) -> tuple[bytes, np.ndarray]:
        """``(blob, offsets into it)`` of ids ``[lo, hi)``."""
        blobs, offs, base = [], [np.zeros(1, np.int64)], 0
        for sp, a, b, _, _ in self._pieces(lo, hi):
            blob, off = sp.read_ids(a, b)
            blobs.append(blob)
            offs.append(off[1:] + base)
            base += len(blob)
        return b"".join(blobs), np.concatenate(offs)

    @property
    def ids(self) -> "ScanIds":
        return ScanIds(self)

    @property
    def header_line(self) -> "ScanColumn":
        return ScanColumn(self, "header_line")


class ScanIds(Sequence):
    """The ids of a scan, read from its spools on demand (``ids[a:b]``: a list)."""

    def __init__(self, scan: _FileScan):
        self.scan = scan

    def __len__(self) -> int:
        return len(self.scan)

    def __getitem__(self, i):
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step != 1:
                return self[lo:hi][::step]
            return decode_ids(*self.scan.read_ids(lo, hi))
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"id {i} out of range for {n} records")
        return self[i:i + 1][0]

    def __iter__(self):
        step = 1 << 16
        for lo in range(0, len(self), step):
            yield from self[lo:lo + step]


class ScanColumn:
    """One column of a scan, read from its spools on demand (``col[i]``, ``col[a:b]``)."""

    def __init__(self, scan: _FileScan, name: str):
        self.scan, self.name = scan, name

    def __len__(self) -> int:
        return len(self.scan)

    def __getitem__(self, i):
        if isinstance(i, slice):
            lo, hi, _ = i.indices(len(self))
            return self.scan.read(self.name, lo, hi)
        return self.scan.read(self.name, i, i + 1)[0]


def _line_of(buf: bytes, pos: int, lines_before: int) -> int:
    return lines_before + buf.count(b"\n", 0, pos) + 1


def _line_text(buf: bytes, pos: int, n: int = 40) -> str:
    start = buf.rfind(b"\n", 0, pos) + 1
    end = buf.find(b"\n", pos)
    line = buf[start:end if end >= 0 else len(buf)].rstrip(b"\r")
    text = line.decode("utf-8", errors="replace")
    return repr(text[:n] + ("..." if len(text) > n else ""))


def detect_format(path: PathLike, opener=open) -> str:
    """``'fastq'`` when the first non-blank byte of a file is ``@``, else ``'fasta'``
    (``opener``: e.g. ``gzip.open`` for a compressed file).

    Only the content decides, never the name; an empty or blank file is ``'fasta'``
    (whose scanner words the error).
    """
    with opener(path, "rb") as fh:
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


class _Content:
    """Content hashes of the normalised sequences and the letter histogram of one file.

    The normalised sequence is the record's sequence with ASCII whitespace removed and
    upper-cased; its hash is blake2b with a 16-byte digest. The histogram counts the
    bytes of sequence lines (headers, FASTQ '+' and quality lines, whitespace excluded).
    """

    def __init__(self):
        self.digests: list[bytes] = []       # 16-byte digests, joined per chunk
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
        self.digests.append(b"".join([b2(s, digest_size=HASH_BYTES).digest() for s in slices]))  # one object a chunk

    def flush(self, spool: Spool) -> None:
        """Append the digests so far to ``spool``'s ``content_hash`` column."""
        if self.digests:
            spool.add("content_hash", np.frombuffer(b"".join(self.digests), dtype="<u8").reshape(-1, 2))
            self.digests.clear()

    def finish(self, spool: Spool) -> np.ndarray:
        """Flush the last digests into ``spool``; the letter counts."""
        if self.pending is not None:
            self.digests.append(self.pending.digest())
            self.pending = None
        self.flush(spool)
        if "content_hash" not in spool.rows:
            spool.add("content_hash", np.zeros((0, 2), "<u8"))
        self.counts[list(WHITESPACE)] = 0
        return self.counts


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
                hline: np.ndarray, n: int, shown: str, marker: str) -> tuple[bytes, np.ndarray]:
    """First word of each header line ``buf[id_start:line_end]`` (after the marker), as
    ``(ids back to back, their byte lengths)``: no Python object per id."""
    id_end = line_end.copy()
    if len(ows):
        j = np.searchsorted(ows, id_start)
        nxt = np.where(j < len(ows), ows[np.minimum(j, len(ows) - 1)], n)
        id_end = np.minimum(id_end, nxt)
    slices = [buf[a:b] for a, b in zip(id_start.tolist(), id_end.tolist())]
    rare = np.flatnonzero(id_end <= id_start)
    for i in rare.tolist():   # rare: '>' alone or '>  id'
        words = buf[int(id_start[i]):int(line_end[i])].split(None, 1)
        if not words:
            raise FastaError(shown, int(hline[i]), f"empty header: '{marker}' must be followed by "
                                                   f"a sequence id (e.g. '{marker}read_1')")
        slices[i] = words[0]
    try:
        b"\n".join(slices).decode("utf-8")      # every id valid UTF-8 (a separator: no id borrows a byte)
        lens = id_end - id_start
        if len(rare):
            lens[rare] = [len(slices[i]) for i in rare.tolist()]
        return b"".join(slices), lens
    except UnicodeDecodeError:
        for i, s in enumerate(slices):
            try:
                s.decode("utf-8")
            except UnicodeDecodeError:
                raise FastaError(shown, int(hline[i]),
                                 "sequence id (the header's first word) is not valid UTF-8 text; this "
                                 "looks like a binary or corrupted file (fix the id: ids must be text)") from None
        raise


_warned_descriptions: set[str] = set()      # files whose non-UTF-8 description was reported


def check_description(header: bytes, shown: str, line: int) -> None:
    """A header line with non-UTF-8 bytes (its id was checked already): the description is kept
    with the bytes escaped (``\\xe9``); one warning per file."""
    try:
        header.decode("utf-8")
    except UnicodeDecodeError as e:
        if shown not in _warned_descriptions:
            _warned_descriptions.add(shown)
            log.warning("%s, line %d: the header's description is not valid UTF-8 (byte 0x%02x, e.g. a Latin-1 "
                        "export); kept with such bytes escaped as \\x%02x (further ones in this file are not "
                        "reported)", shown, line, header[e.start], header[e.start])


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


class Blocks:
    """A file's bytes for a scanner, block by block: the sha256 of the bytes as stored (the
    fingerprint), their count, progress, and old-Mac line endings read as newlines.

    ``stream``: anything with ``read(n)`` (a plain file, a decompressing reader). A file
    whose first 64 KiB hold carriage returns and no newline has CR-only line endings; each
    CR is then read as a newline (one byte for one: offsets stay those of the file).
    """

    def __init__(self, stream, progress: Callable[[int], None] | None = None, cr_only: bool = False):
        self.stream, self.progress, self.cr_only = stream, progress, cr_only
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int) -> bytes:
        block = self.stream.read(n)
        if block:
            self.sha.update(block)
            self.size += len(block)
            if self.cr_only:
                block = block.translate(_CR_AS_LF)
        if self.progress is not None:
            self.progress(len(block))
        return block

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


_CR_AS_LF = bytes.maketrans(b"\r", b"\n")


def cr_only(head: bytes) -> bool:
    """The first bytes of a file: CR line endings and no newline (an old Mac export)."""
    return b"\n" not in head and b"\r" in head


# ------------------------------------------------------------------ FASTA


def _scan_fasta_file(fh: "Blocks", shown: str, block_size: int, spool: Spool) -> _FileScan:
    """Scan a FASTA stream chunk by chunk, each chunk's columns appended to ``spool`` as it is scanned.

    A record's extent ends at the next header (or the end of the file): the last record of a chunk
    waits (``p_off``, ``p_ws``: its offset, the whitespace before it) for the next chunk's first header."""
    content = _Content()
    base = 0                    # global offset of the current chunk
    ws_before = 0               # whitespace bytes before the chunk
    lines_before = 0            # newlines before the chunk
    seen_header = False
    p_off = p_ws = None         # the pending record (the last header seen)
    carry = b""
    while True:
        block = fh.read(block_size)
        if block:
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
        del res
        if len(H):
            seen_header = True
            starts, wstarts = off[:-1], C_off[:-1]
            ends, wends = H[1:], C_H[1:]
            if p_off is not None:
                starts, wstarts = np.concatenate([[p_off], starts]), np.concatenate([[p_ws], wstarts])
                ends, wends = H, C_H
            nbytes = ends - starts
            spool.add("offset", off)
            spool.add("nbytes", nbytes)
            spool.add("length", nbytes - (wends - wstarts))
            spool.add("header_line", hline)
            spool.add_ids(*ids)
            p_off, p_ws = int(off[-1]), int(C_off[-1])
        if seen_header:
            content.add(*pieces)
            content.flush(spool)
        base += n
        ws_before += nws
        lines_before += nnl
        if final:
            break
    size = base
    if p_off is None:
        what = "the file is empty" if size == 0 else "the file contains only blank lines"
        raise FastaError(
            shown, max(lines_before, 1),
            f"no FASTA or FASTQ records ({what}); expected '>id' header lines each followed by sequence lines, "
            f"or FASTQ's four-line '@id' records",
        )
    spool.add("nbytes", np.array([size - p_off], np.int64))
    spool.add("length", np.array([size - p_off - (ws_before - p_ws)], np.int64))
    counts = content.finish(spool)
    spool.close()
    return _FileScan("fasta", [(spool, 0, 0)], counts, fh.hexdigest(), size)


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
        check_description(buf[int(H[r]) + 1:int(E[r])], shown, int(hline[r]))
