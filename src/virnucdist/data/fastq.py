"""The FASTQ scanner: 4-line records (header, sequence, '+', quality), in binary blocks."""

from __future__ import annotations

import numpy as np

from .fasta import WHITESPACE, FastaError
from .spool import Spool
from .scan import (_BOM, Blocks, _Content, _FileScan, _check_nul, _header_ids, _line_of, _line_text,
                   _non_ascii_error, _other_ws, check_description)


def _scan_fastq_file(fh: Blocks, shown: str, block_size: int, spool: Spool) -> _FileScan:
    """4-line FASTQ records (header, sequence, '+', quality); chunks end at record ends; each chunk's
    columns are appended to ``spool``."""
    content = _Content()
    records = 0
    size = 0
    base = 0                    # file offset of buf[0]
    lines_before = 0            # newlines before buf[0]
    carry = b""
    started = False
    while True:
        block = fh.read(block_size)
        final = not block
        if block:
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
            for name, col in zip(("offset", "nbytes", "length", "header_line"), res[:4]):
                spool.add(name, col)
            spool.add_ids(*res[4])
            records += len(res[0])
            content.records(res[5], res[5], res[6])
            content.flush(spool)
            del res
        carry = buf[used:]
        base += used
        lines_before += used_lines
        if final:
            break
    if not records:
        raise FastaError(shown, max(lines_before, 1),
                         "no FASTQ records; expected 4-line records (header '@id', sequence, '+', quality)")
    counts = content.finish(spool)
    spool.close()
    return _FileScan("fastq", [(spool, 0, 0)], counts, fh.hexdigest(), size)


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
            check_description(buf[start:int(ends[i])], shown, line)
        elif phase == 1:
            raise _non_ascii_error(buf, int(hi[np.searchsorted(li, i)]), line, shown, "FASTQ")
        else:
            raise FastaError(shown, line, f"non-ASCII character in quality line "
                                          f"{_line_text(buf, start)}; quality values must be ASCII "
                                          "('!' to '~'); the file is corrupted")
