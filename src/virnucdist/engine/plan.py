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

from ..sharding.partition import partition

__all__ = ["PLAN_DIR", "Plan", "Share", "make_plan", "write_shares", "read_share"]

PLAN_DIR = "plan"


@dataclass
class Plan:
    """Rank 0's whole view: ``source[i]`` the row whose result row ``i`` takes; ``empty``; ``done``;
    ``first`` (the first record of its sequence); ``shares`` the rows of each rank."""

    costs: np.ndarray
    source: np.ndarray
    empty: np.ndarray
    done: np.ndarray
    first: np.ndarray
    shares: list[np.ndarray]


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
    """The partition of every distinct non-empty record (done or not) over ``world_size`` ranks."""
    n = len(costs)
    first = source == np.arange(n)
    # the partition comes from ALL the records to compute, never from what is left: a resumed run at the
    # same world size packs every batch exactly as an uninterrupted run did
    shares = partition(costs, world_size, skip=~(first & ~empty))
    return Plan(costs, source, empty, done, first, shares)


def share_of(plan: Plan, rank: int) -> Share:
    rows = plan.shares[rank]
    return Share(rows, np.asarray(plan.costs[rows], dtype=np.int64), np.asarray(plan.done[rows], dtype=bool))


def write_shares(out: Path, plan: Plan) -> None:
    """Rank 0: ``OUTDIR/plan/rank<k>.npz`` for every rank but 0 (written aside, then renamed)."""
    d = Path(out) / PLAN_DIR
    if len(plan.shares) > 1:
        d.mkdir(parents=True, exist_ok=True)
    for k in range(1, len(plan.shares)):
        s = share_of(plan, k)
        tmp = d / f"rank{k}.tmp{os.getpid()}.npz"
        np.savez(tmp, rows=s.rows, costs=s.costs, done=s.done)
        os.replace(tmp, d / f"rank{k}.npz")


def read_share(out: Path, rank: int) -> Share:
    """Rank ``rank`` (> 0): its run, as rank 0 wrote it for this attempt."""
    with np.load(Path(out) / PLAN_DIR / f"rank{rank}.npz", allow_pickle=False) as z:
        return Share(z["rows"], z["costs"], z["done"])
