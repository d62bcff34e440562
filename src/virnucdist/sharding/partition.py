"""Deterministic, cost-balanced assignment of records to ranks.

``costs`` are per-record *token counts*, the unit the GPUs actually spend time
on: e.g. ``length + 2`` for ESM-2 (BOS/EOS), the tokenizer's
``estimate_tokens(length)`` in general. Balancing the sum of tokens (not the
number of records) is what keeps ranks finishing together.

Algorithm: longest-processing-time greedy (largest first to the least-loaded
rank) is exact for what matters but a Python heap loop per record costs about a
microsecond. So records are sorted by cost (descending, ties by index) and

* the large head is dealt in "snake" order (ranks 0..w-1, then w-1..0, ...),
  which keeps the loads within about one maximum cost of each other;
* the small tail (at least ``lpt_tail`` records, and enough tokens to cover
  several maximum costs per rank) is placed with exact LPT on a heap, starting
  from the head's loads, which evens the remaining difference out to about one
  small record.

Everything is a pure function of ``(costs, world_size, skip)``: the same inputs
give the same assignment on every rank and every run.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["partition", "rank_share", "rank_of", "rank_costs"]

LPT_TAIL = 65536


def _skip_mask(skip: np.ndarray | None, n: int) -> np.ndarray:
    if skip is None:
        return np.zeros(n, dtype=bool)
    skip = np.asarray(skip)
    if skip.dtype == bool:
        if skip.shape != (n,):
            raise ValueError(f"skip mask has shape {skip.shape}, expected ({n},)")
        return skip
    if skip.size and not np.issubdtype(skip.dtype, np.integer):
        raise ValueError("skip must be a boolean mask or an array of record indices")
    mask = np.zeros(n, dtype=bool)
    idx = skip.astype(np.int64, copy=False).ravel()
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"skip index out of range for {n} records")
    mask[idx] = True
    return mask


def rank_of(costs: np.ndarray, world_size: int, *, skip: np.ndarray | None = None,
            lpt_tail: int = LPT_TAIL) -> np.ndarray:
    """int32 array: the rank of each record, ``-1`` for skipped ones."""
    costs = np.asarray(costs)
    if costs.ndim != 1:
        raise ValueError(f"costs must be 1-D, got shape {costs.shape}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    n = len(costs)
    if np.issubdtype(costs.dtype, np.integer) or costs.dtype == bool:
        c = costs.astype(np.int64)
    else:
        c = costs.astype(np.float64)
        if n and not np.all(np.isfinite(c)):
            raise ValueError("costs must be finite")
    if n and c.min() < 0:
        raise ValueError("costs must be non-negative")
    out = np.full(n, -1, dtype=np.int32)
    live = np.flatnonzero(~_skip_mask(skip, n))
    if world_size == 1:
        out[live] = 0
        return out
    m = len(live)
    if m == 0:
        return out
    # cost descending, ties by index ascending (stable sort of the negated costs)
    order = live[np.argsort(-c[live], kind="stable")]
    sc = c[order]
    # tail: at least lpt_tail records and at least 4 maximum costs per rank of tokens
    suffix = np.cumsum(sc[::-1])                  # suffix[k-1] = sum of the k smallest
    need = 4 * world_size * sc[0]
    k_tokens = int(np.searchsorted(suffix, need)) + 1
    tail = min(m, max(lpt_tail, k_tokens))
    head = m - tail
    loads = np.zeros(world_size, dtype=c.dtype)
    if head:
        j = np.arange(head)
        rnd, pos = np.divmod(j, world_size)
        ranks = np.where(rnd % 2 == 0, pos, world_size - 1 - pos).astype(np.int32)
        out[order[:head]] = ranks
        loads += np.bincount(ranks, weights=sc[:head], minlength=world_size).astype(c.dtype)
    heap = [(loads[r].item(), r) for r in range(world_size)]
    heapq.heapify(heap)
    tail_ranks = np.empty(tail, dtype=np.int32)
    replace = heapq.heapreplace
    for t, cost in enumerate(sc[head:].tolist()):
        load, r = heap[0]
        tail_ranks[t] = r
        replace(heap, (load + cost, r))
    out[order[head:]] = tail_ranks
    return out


def partition(costs: np.ndarray, world_size: int, *, skip: np.ndarray | None = None) -> list[np.ndarray]:
    """For each rank, the ascending (input-order) record indices assigned to it.

    ``costs``: per-record token counts (e.g. ``length + 2`` for ESM-2).
    ``skip``: boolean mask or index array of records already done (resume); excluded.
    Every non-skipped record appears in exactly one rank's array.
    """
    r = rank_of(costs, world_size, skip=skip)
    order = np.argsort(r, kind="stable")             # input order within each rank
    counts = np.bincount(r[r >= 0], minlength=world_size)
    start = int(np.count_nonzero(r < 0))
    bounds = start + np.concatenate(([0], np.cumsum(counts)))
    return [order[bounds[k]:bounds[k + 1]].astype(np.int64) for k in range(world_size)]


def rank_share(costs: np.ndarray, world_size: int, rank: int, skip: np.ndarray | None = None) -> np.ndarray:
    """The ascending record indices of one ``rank`` (see :func:`partition`)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    return np.flatnonzero(rank_of(costs, world_size, skip=skip) == rank)


def rank_costs(costs: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """Sum of costs per rank for a :func:`partition` result (for reports and tests)."""
    costs = np.asarray(costs)
    return np.array([costs[p].sum() for p in parts])
