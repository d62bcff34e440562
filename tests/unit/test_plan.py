"""The engine's plan: rank 0 partitions the whole index, every other rank reads only its own run."""

from __future__ import annotations

import numpy as np

from virnucdist.engine.plan import PLAN_DIR, make_plan, read_share, share_of, write_shares
from virnucdist.sharding.partition import partition


def test_each_rank_reads_exactly_its_partition_run(tmp_path):
    rng = np.random.default_rng(3)
    n = 1000
    costs = rng.integers(1, 400, size=n)
    source = np.arange(n)
    dup = rng.choice(np.arange(1, n), size=100, replace=False)
    source[dup] = rng.integers(0, dup)               # a duplicate points to an earlier record
    empty = rng.random(n) < 0.05
    done = rng.random(n) < 0.3
    plan = make_plan(costs, source, empty, done, 3)
    first = source == np.arange(n)
    want = partition(costs, 3, skip=~(first & ~empty))
    write_shares(tmp_path, plan)
    assert not (tmp_path / PLAN_DIR / "rank0.npz").exists()     # rank 0 keeps its own in memory
    for k in range(3):
        s = share_of(plan, 0) if k == 0 else read_share(tmp_path, k)
        np.testing.assert_array_equal(s.rows, want[k])
        np.testing.assert_array_equal(s.costs, costs[want[k]])
        np.testing.assert_array_equal(s.done, done[want[k]])
        assert not (empty[s.rows] | ~first[s.rows]).any()
        some = s.rows[::7]
        np.testing.assert_array_equal(s.rows[s.positions(some)], some)
    assert sum(len(p) for p in plan.shares) == int((first & ~empty).sum())


def test_one_rank_writes_no_plan_files(tmp_path):
    plan = make_plan(np.ones(5, np.int64), np.arange(5), np.zeros(5, bool), np.zeros(5, bool), 1)
    write_shares(tmp_path, plan)
    assert not (tmp_path / PLAN_DIR).exists()
    assert share_of(plan, 0).rows.tolist() == [0, 1, 2, 3, 4]


def test_plan_in_slices_equals_partition(monkeypatch):
    """Rank 0 plans in slices of rows (a bool per row beside its inputs): the runs are partition()'s,
    whatever the slice size, world size, zero costs, duplicates and empty records."""
    import virnucdist.engine.plan as plan_mod
    rng = np.random.default_rng(0)
    for trial in range(60):
        n, w = int(rng.integers(0, 2000)), int(rng.integers(1, 10))
        monkeypatch.setattr(plan_mod, "STEP", int(rng.integers(1, 500)))
        costs = rng.integers(0, 500, size=n) * (rng.random(n) < rng.random()) * (trial % 7 != 0)
        source = np.arange(n)
        if n > 1:
            d = rng.choice(np.arange(1, n), size=n // 3, replace=False)
            source[d] = rng.integers(0, d)
        empty, done = rng.random(n) < rng.random() * 0.5, rng.random(n) < 0.3
        plan = make_plan(costs, source, empty, done, w)
        live = (source == np.arange(n)) & ~empty
        want = partition(costs, w, skip=~live)
        assert len(plan.shares) == w
        for got, exp in zip(plan.shares, want):
            np.testing.assert_array_equal(got, exp)
        assert plan.counts == {"distinct": int(live.sum()), "served": int((~live & ~empty).sum()),
                               "empty": int(empty.sum()), "done": int(done.sum()),
                               "done_first": int((done & (source == np.arange(n))).sum()),
                               "work": int((live & ~done).sum())}


def test_a_rank_that_cannot_see_rank_0s_plan_says_why(tmp_path):
    """A node whose output directory is not the one rank 0 wrote to (no shared filesystem): one line."""
    import pytest

    from virnucdist.errors import UserError
    with pytest.raises(UserError, match="rank 3: .*rank3.npz.*shared by all nodes"):
        read_share(tmp_path, 3)
