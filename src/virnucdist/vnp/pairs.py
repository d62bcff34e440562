"""Pair-level calls of a paired-end run: ``pair_summary.tsv``, one line per pair of mates.

The rule (VirNucPro's consensus rule, applied across the two mates as it is across the six frames
of one chunk): a pair is ``virus`` when the highest virus score (score2) over EVERY kept frame of
both mates is at least the highest non-virus score (score1) over the same frames (a tie is
``virus``, as in ``prediction_results_highestscore.csv``), ``others`` otherwise; ``no_frame`` when
neither mate kept a frame, ``empty`` when both mates are empty. Each mate's own call (its line of
``read_summary.tsv``) is written beside it. Scores are compared as the float32 values written to
``prediction_results.txt``.

Columns: ``pair_id`` (the mates' id without ``/1``, ``/2``), ``kept_frames`` (both mates),
``best_virus_score`` (over both mates; ``NA`` without frames), ``call``, ``mate1_call``,
``mate2_call``.
"""

from __future__ import annotations

from typing import Sequence, TextIO

import numpy as np

__all__ = ["PAIR_HEADER", "pair_call", "pair_id", "PairWriter"]

PAIR_HEADER = ("pair_id", "kept_frames", "best_virus_score", "call", "mate1_call", "mate2_call")


_MATE_SUFFIX = ("/1", "/2")


def pair_id(read_id: str) -> str:
    """The pair's id: a mate's id without its ``/1`` or ``/2``."""
    return read_id[:-2] if read_id[-2:] in _MATE_SUFFIX else read_id


def pair_call(chunks: int, score1: Sequence[float], score2: Sequence[float]) -> str:
    """The rule of the module docstring over the pooled frames of both mates (``chunks``: both mates')."""
    if chunks == 0:
        return "empty"
    if not len(score1):
        return "no_frame"
    return "virus" if np.float32(max(map(np.float32, score2))) >= np.float32(max(map(np.float32, score1))) \
        else "others"


class PairWriter:
    """Lines of ``pair_summary.tsv`` from the reads in input order.

    ``add_read`` (or ``add_reads``, a block's reads as columns) is fed every read with its mate number
    (0: single-end, not part of a pair) and its own call. A pair's line is written when its second mate (in input order) arrives: right after the
    first for R1/R2 files, interleaved files and unaligned BAM; later for mates apart (a
    coordinate-sorted BAM), which wait in memory until then. ``counts`` holds the pairs per call
    and ``unpaired_mates``: mates whose other mate never came (left out of the file)."""

    def __init__(self, fh: TextIO):
        self.fh, self.pending = fh, {}
        self.counts = {"pairs": 0, "virus": 0, "others": 0, "no_frame": 0, "empty": 0, "unpaired_mates": 0}
        fh.write("\t".join(PAIR_HEADER) + "\n")

    def add_read(self, read_id: str, mate: int, chunks: int, frames: int, max1, max2, best: str, call: str) -> None:
        """A read given by what its line needs: its kept ``frames``, the highest score1 and score2 over
        them (float32; None without frames), ``best`` = ``max2`` as written (``NA`` without frames)."""
        if mate not in (1, 2):
            return
        key = pair_id(read_id)
        other = self.pending.pop(key, None)
        this = (mate, chunks, frames, max1, max2, best, call)
        if other is None or other[0] == mate:  # the first mate of its pair (or a mate seen twice: kept apart)
            if other is not None:
                self.counts["unpaired_mates"] += 1
            self.pending[key] = this
            return
        (_, c1, f1, a1, b1, best1, call1), (_, c2, f2, a2, b2, best2, call2) = sorted((other, this),
                                                                                      key=lambda m: m[0])
        if not f1 + f2:
            best, call_pair = "NA", pair_call(c1 + c2, (), ())
        else:  # the maxima over both mates' frames (a mate without frames has none)
            m1 = a1 if not f2 else a2 if not f1 else max(a1, a2)
            best, m2 = (best1, b1) if not f2 or (f1 and b1 >= b2) else (best2, b2)
            call_pair = pair_call(c1 + c2, (m1,), (m2,))
        self.fh.write(f"{key}\t{f1 + f2}\t{best}\t{call_pair}\t{call1}\t{call2}\n")
        self.counts["pairs"] += 1
        self.counts[call_pair] += 1

    def add_reads(self, ids: list, mate, chunks, frames, max1, max2, best: list, calls: list) -> None:
        """Consecutive reads (input order) as :meth:`add_read` takes them, as columns (``max1``, ``max2``:
        float32, any value for a read without frames). Mates one right after the other (R1/R2 files,
        interleaved, unaligned BAM) are written with array operations; any other order read by read."""
        mate = np.asarray(mate)
        rows = np.flatnonzero((mate == 1) | (mate == 2)).tolist()
        at = 0
        while at < len(rows) and self.pending:  # mates waiting from an earlier block: read by read
            j = rows[at]
            self.add_read(ids[j], int(mate[j]), int(chunks[j]), int(frames[j]), max1[j], max2[j], best[j], calls[j])
            at += 1
        rows = rows[at:]
        tail = rows[-1:] if len(rows) % 2 else []  # a first mate whose other mate comes in the next block
        whole = rows[:len(rows) - len(tail)]
        a, b = np.asarray(whole[0::2], np.int64), np.asarray(whole[1::2], np.int64)
        keys = [i[:-2] if i[-2:] in _MATE_SUFFIX else i for i in (ids[j] for j in rows)]  # pair_id, inline
        ka, kb = keys[0:len(a) * 2:2], keys[1:len(a) * 2:2]
        adjacent = (mate[a] == 1).all() and (mate[b] == 2).all() and ka == kb and len(set(keys)) == len(a) + len(tail)
        if not adjacent:
            for j in rows:
                self.add_read(ids[j], int(mate[j]), int(chunks[j]), int(frames[j]), max1[j], max2[j], best[j], calls[j])
            return
        if len(a):
            self._add_adjacent(ka, a, b, np.asarray(chunks), np.asarray(frames), max1, max2, best, calls)
        for j in tail:
            self.add_read(ids[j], int(mate[j]), int(chunks[j]), int(frames[j]), max1[j], max2[j], best[j], calls[j])

    def _add_adjacent(self, keys, a, b, chunks, frames, max1, max2, best, calls) -> None:
        """The lines of pairs ``a[i]`` (mate 1), ``b[i]`` (mate 2), in order: :meth:`add_read`'s rule as arrays."""
        fa, fb = frames[a], frames[b]
        none = np.float32(-np.inf)  # a mate without frames has no maximum
        m1a, m1b = (np.where(f > 0, np.asarray(max1, np.float32)[x], none) for f, x in ((fa, a), (fb, b)))
        m2a, m2b = (np.where(f > 0, np.asarray(max2, np.float32)[x], none) for f, x in ((fa, a), (fb, b)))
        f, c = fa + fb, chunks[a] + chunks[b]
        first = m2a >= m2b  # the best score's text: mate 1's on a tie (the first maximum)
        call = np.where(c == 0, 0, np.where(f == 0, 1, np.where(np.maximum(m2a, m2b) >= np.maximum(m1a, m1b), 3, 2)))
        names = ("empty", "no_frame", "others", "virus")
        text = np.asarray(names, dtype=object)[call].tolist()
        best, calls = np.asarray(best, dtype=object), np.asarray(calls, dtype=object)
        bt = np.where(first & (fa > 0), best[a], best[b]).tolist()  # neither mate with frames: mate 2's NA
        self.fh.write("".join([f"{k}\t{n}\t{t}\t{p}\t{c1}\t{c2}\n"
                               for k, n, t, p, c1, c2 in zip(keys, f.tolist(), bt, text, calls[a].tolist(),
                                                             calls[b].tolist())]))
        self.counts["pairs"] += len(a)
        for name, n in zip(names, np.bincount(call, minlength=4).tolist()):
            self.counts[name] += n

    def close(self) -> dict:
        """Count the mates still waiting (no other mate came); returns ``counts``."""
        self.counts["unpaired_mates"] += len(self.pending)
        self.pending = {}
        return self.counts
