"""Who computes what, decided once on rank 0 and handed to each rank as just its own run.

Rank 0 reads the whole-index columns (costs, representatives, lengths, the done mask from
the shards) and computes the partition; it writes each rank's contiguous run (its rows,
their costs, which of them are already done) to ``OUTDIR/plan/rank<k>.npz``. Every other
rank reads only its own file, so a rank's resident memory for the plan grows with its share,
not with the index (at 100M reads, 16+ bytes per read on every rank would be ~1.6 GB each).

The plan is a pure function of ``(costs, source, empty, world_size)`` (and ``done``, which
only marks rows): a resumed run at the same world size gets the same runs, windows and
batches as an uninterrupted one. Files of an earlier attempt are overwritten.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

__all__ = ["PLAN_DIR", "Plan", "Share", "make_plan", "share_of", "write_shares", "read_share"]

PLAN_DIR = "plan"


STEP = 1 << 20  # rows per slice of rank 0's passes over the whole index


@dataclass
class Plan:
    """Rank 0's whole view: ``source[i]`` the row whose result row ``i`` takes; ``empty``; ``done``;
    ``live`` (to compute: the first record of its sequence, not empty); rank ``k``'s run is the live
    rows in ``bounds[k]:bounds[k + 1]``; ``counts`` for the log and the report."""

    costs: np.ndarray
    source: np.ndarray
    empty: np.ndarray
    done: np.ndarray
    live: np.ndarray
    bounds: np.ndarray
    counts: dict

    @property
    def shares(self) -> list[np.ndarray]:
        return [share_of(self, k).rows for k in range(len(self.bounds) - 1)]


@dataclass
class Share:
    """One rank's run: ``rows`` (ascending), their ``costs`` and ``done`` flags, aligned with ``rows``."""

    rows: np.ndarray
    costs: np.ndarray
    done: np.ndarray

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """Positions in this share of ``rows`` (all of them in the share)."""
        return np.searchsorted(self.rows, rows)


def make_plan(costs: np.ndarray, source: np.ndarray, empty: np.ndarray, done: np.ndarray, world_size: int) -> Plan:
    """The partition of every distinct non-empty record (done or not) over ``world_size`` ranks: the same
    runs as :func:`virnucdist.sharding.partition` (each live record to the rank its cost midpoint falls
    in), computed in slices of rows: beside its inputs, a bool per row, not several arrays of 8 bytes.

    The partition comes from ALL the records to compute, never from what is left: a resumed run at the
    same world size packs every batch exactly as an uninterrupted run did."""
    n = len(costs)
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    live = np.empty(n, dtype=bool)
    total = done_first = 0
    for lo in range(0, n, STEP):
        hi = min(n, lo + STEP)
        first = np.asarray(source[lo:hi]) == np.arange(lo, hi)
        live[lo:hi] = first & ~np.asarray(empty[lo:hi])
        done_first += int((first & np.asarray(done[lo:hi])).sum())
        total += int(np.asarray(costs[lo:hi])[live[lo:hi]].sum())
    count = int(live.sum())
    if world_size == 1 or count == 0:
        cuts = np.full(world_size - 1, count, dtype=np.int64)
    elif total <= 0:  # all free: split by count
        cuts = (np.arange(1, world_size) * count) // world_size
    else:  # exact: integer costs, float64 sums below 2**53 as in partition()
        t = np.float64(total) * np.arange(1, world_size) / world_size
        cuts, prefix = np.zeros(world_size - 1, dtype=np.int64), 0
        for lo in range(0, n, STEP):
            lc = np.asarray(costs[lo:lo + STEP])[live[lo:lo + STEP]].astype(np.float64)
            mid = prefix + np.cumsum(lc) - lc / 2  # non-decreasing: the counts below t add up over slices
            cuts += np.searchsorted(mid, t, side="left")
            prefix += int(lc.sum())
    bounds = np.full(world_size + 1, n, dtype=np.int64)  # the row of each cut's live record
    bounds[0] = 0
    seen = 0
    for lo in range(0, n, STEP):
        at = np.flatnonzero(live[lo:lo + STEP])
        inside = (cuts >= seen) & (cuts < seen + len(at))
        bounds[1:world_size][inside] = lo + at[cuts[inside] - seen]
        seen += len(at)
    n_empty, n_done = int(np.count_nonzero(empty)), int(np.count_nonzero(done))
    counts = {"distinct": count, "served": n - n_empty - count, "empty": n_empty, "done": n_done,
              "done_first": done_first, "work": count - int(np.count_nonzero(live & done))}
    return Plan(costs, source, empty, done, live, bounds, counts)


def share_of(plan: Plan, rank: int) -> Share:
    lo, hi = int(plan.bounds[rank]), int(plan.bounds[rank + 1])
    rows = lo + np.flatnonzero(plan.live[lo:hi])
    return Share(rows, np.asarray(plan.costs[rows], dtype=np.int64), np.asarray(plan.done[rows], dtype=bool))


def write_shares(out: Path, plan: Plan) -> None:
    """Rank 0: ``OUTDIR/plan/rank<k>.npz`` for every rank but 0 (written aside, then renamed)."""
    d = Path(out) / PLAN_DIR
    ranks = len(plan.bounds) - 1
    if ranks > 1:
        d.mkdir(parents=True, exist_ok=True)
    for k in range(1, ranks):
        s = share_of(plan, k)
        tmp = d / f"rank{k}.tmp{os.getpid()}.npz"
        np.savez(tmp, rows=s.rows, costs=s.costs, done=s.done)
        os.replace(tmp, d / f"rank{k}.npz")


def read_share(out: Path, rank: int) -> Share:
    """Rank ``rank`` (> 0): its run, as rank 0 wrote it for this attempt."""
    path = Path(out) / PLAN_DIR / f"rank{rank}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            return Share(z["rows"], z["costs"], z["done"])
    except FileNotFoundError:
        raise UserError(f"rank {rank}: {path} (written by rank 0) is not there: every node must see the same "
                        "output directory (-o on a filesystem shared by all nodes)") from None
