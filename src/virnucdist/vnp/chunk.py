"""Stage 1 of VirNucPro: cut reads into overlapping fixed-size chunks.

The rules (and the original tool's quirk) are in ``shared/spec/virnucpro-stages.md``
section 1. Everything here is pure: no file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Protocol, Union

__all__ = ["ChunkStats", "RecordLike", "chunk_spans", "window_spans", "chunk_records", "chunk_id", "id_and_seq"]


class _HasIdSeq(Protocol):
    id: str
    seq: str


#: A record given as an ``(id, seq)`` pair or an object with ``.id`` and ``.seq``.
RecordLike = Union[tuple[str, str], _HasIdSeq]


def id_and_seq(rec: Any) -> tuple[str, str]:
    """``(id, seq)`` of a pair or of a record object such as ``FastaRecord``."""
    if isinstance(rec, tuple) and len(rec) == 2:
        return rec[0], rec[1]
    return rec.id, str(rec.seq)


def chunk_spans(length: int, chunk_size: int) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` spans of the chunks of a read of ``length`` bases.

    Exactly VirNucPro's rule: n = ceil(L/c), R = n*c - L, q = int(R/n),
    u = R - q*(n-1), steps s = [q+1]*u + [q]*max(0, n-1-u) + [0]; chunk k starts at
    k*c - sum(s[:k]) and is clipped at L. Because R is divided by n (not n-1) the
    last chunk can be shorter than c (e.g. L=2000, c=300: last span [1710, 2000)).
    ``length == 0`` gives ``[]``; ``length <= chunk_size`` gives ``[(0, length)]``.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if length == 0:
        return []
    if length <= chunk_size:
        return [(0, length)]
    n = -(-length // chunk_size)
    total_pad = n * chunk_size - length
    q = int(total_pad / n)
    u = total_pad - q * (n - 1)
    spans: list[tuple[int, int]] = []
    shift = 0  # sum(s[:k])
    for k in range(n):
        start = k * chunk_size - shift
        spans.append((start, min(start + chunk_size, length)))
        # s[k]: the first u steps are q+1, the next ones q (the final 0 is never summed).
        shift += q + 1 if k < u else q
    return spans


def window_spans(length: int, window: int, step: int) -> list[tuple[int, int]]:
    """Sliding windows ``[k*step, k*step + window)`` that fit in ``length``, plus one window ending at
    ``length`` when the last start leaves a tail uncovered. A sequence no longer than ``window`` is one
    span (itself), as :func:`chunk_spans` does; ``length == 0`` gives ``[]``."""
    if window <= 0 or step <= 0:
        raise ValueError(f"window and step must be positive, got {window}, {step}")
    if length == 0:
        return []
    if length <= window:
        return [(0, length)]
    spans = [(a, a + window) for a in range(0, length - window + 1, step)]
    if spans[-1][1] < length:
        spans.append((length - window, length))
    return spans


def chunk_id(read_id: str, k: int) -> str:
    """ID of the 0-based chunk ``k`` of ``read_id``: ``{read_id}_chunk_{k+1}``."""
    return f"{read_id}_chunk_{k + 1}"


@dataclass
class ChunkStats:
    """Counters filled in while :func:`chunk_records` is consumed."""

    reads: int = 0
    chunks: int = 0
    empty_read_ids: list[str] = field(default_factory=list)

    @property
    def empty_reads(self) -> int:
        return len(self.empty_read_ids)


def chunk_records(
    records: Iterable[RecordLike], chunk_size: int, stats: ChunkStats | None = None
) -> Iterator[tuple[str, str]]:
    """Yield ``(chunk_id, chunk_seq)`` for every chunk of every read, in input order.

    ``records`` are ``(id, seq)`` pairs or objects with ``.id`` and ``.seq``
    (e.g. :class:`virnucdist.data.fasta.FastaRecord`). Letter case is kept. Empty reads
    (which crash the original tool) are skipped; pass a :class:`ChunkStats` to learn
    which ones, and how many reads and chunks went through.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    for rec in records:
        rid, seq = id_and_seq(rec)
        if stats is not None:
            stats.reads += 1
        spans = chunk_spans(len(seq), chunk_size)
        if not spans:
            if stats is not None:
                stats.empty_read_ids.append(rid)
            continue
        if stats is not None:
            stats.chunks += len(spans)
        for k, (start, end) in enumerate(spans):
            yield chunk_id(rid, k), seq[start:end]
