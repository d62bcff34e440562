"""Deterministic, cost-balanced assignment of records to ranks: contiguous ranges.

``costs`` are per-record *token counts*, the unit the GPUs actually spend time
on (``length + 2`` for ESM-2, the tokenizer's ``estimate_tokens(length)`` in
general). Each rank takes ONE contiguous run of the records to do, cut where the
prefix sum of costs crosses ``k / world_size`` of the total; so the ranks' loads
differ by at most about one record's cost, and every rank's share is in input
order. That is what lets each rank write its results in input order and the
final merge be a concatenation of contiguous runs instead of a scatter.

Records to skip (empty, served by a duplicate) are left out before cutting. The
engine never skips what an earlier attempt already did: a resumed run plans the
same ranges, windows and batches as an uninterrupted one, so it writes the same
bytes. Everything is a pure function of ``(costs, world_size, skip)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["partition", "rank_costs", "plan_windows"]


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


def partition(costs: np.ndarray, world_size: int, *, skip: np.ndarray | None = None) -> list[np.ndarray]:
    """For each rank, a contiguous, ascending run of the record indices that are not skipped.

    ``costs``: per-record token counts (non-negative, finite). ``skip``: boolean mask or index array of
    records to leave out. Every other record appears in exactly one rank's array; rank ``k`` gets the
    records whose cost prefix sum (the record's midpoint) falls in ``[k/w, (k+1)/w)`` of the total.
    """
    costs = np.asarray(costs)
    if costs.ndim != 1:
        raise ValueError(f"costs must be 1-D, got shape {costs.shape}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    c = costs.astype(np.float64)
    if len(c) and (not np.all(np.isfinite(c)) or c.min() < 0):
        raise ValueError("costs must be finite and non-negative")
    live = np.flatnonzero(~_skip_mask(skip, len(c)))
    if world_size == 1 or len(live) == 0:
        return [live.astype(np.int64)] + [np.zeros(0, np.int64) for _ in range(world_size - 1)]
    lc = c[live]
    total = lc.sum()
    if total <= 0:  # all free: split by count
        cuts = (np.arange(1, world_size) * len(live)) // world_size
    else:
        mid = np.cumsum(lc) - lc / 2  # each record belongs to the rank its midpoint falls in
        cuts = np.searchsorted(mid, total * np.arange(1, world_size) / world_size, side="left")
    bounds = np.concatenate(([0], cuts, [len(live)]))
    return [live[bounds[k]:bounds[k + 1]].astype(np.int64) for k in range(world_size)]


def rank_costs(costs: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """Sum of costs per rank for a :func:`partition` result (for reports and tests)."""
    costs = np.asarray(costs)
    return np.array([costs[p].sum() for p in parts])


def plan_windows(rows: np.ndarray, costs: np.ndarray, max_cost: int, *, max_rows: int | None = None,
                 ramp: bool = False) -> list[np.ndarray]:
    """Consecutive runs of ``rows`` (a rank's share) of at most ``max_cost`` (beyond one record) and
    ``max_rows`` records: the units a rank packs, runs and commits in input order.

    ``ramp``: the first windows get 1/8, 1/4, 1/2 of ``max_cost``, so the GPU starts while the
    DataLoader workers prepare the full-size ones.
    """
    rows = np.asarray(rows, dtype=np.int64)
    costs = np.asarray(costs, dtype=np.int64)
    if len(rows) != len(costs):
        raise ValueError("rows and costs differ in length")
    windows, start, fill = [], 0, 0
    cap = max(1, max_cost >> 3) if ramp else max_cost
    limit = max_rows or len(rows) or 1
    for i, n in enumerate(costs.tolist()):
        if i > start and (i - start >= limit or fill + n > cap):
            windows.append(rows[start:i])
            start, fill, cap = i, 0, min(max_cost, cap * 2)
        fill += n
    if start < len(rows):
        windows.append(rows[start:])
    return windows
