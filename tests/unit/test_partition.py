import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucdist.sharding import partition, plan_windows, rank_costs


def _realistic(n=100_000, seed=0):
    """Reads of 20-80 tokens mixed with lognormal-length records of 50-1000."""
    rng = np.random.default_rng(seed)
    short = rng.integers(20, 81, size=n // 2)
    lengths = np.clip(rng.lognormal(mean=5.5, sigma=0.8, size=n - n // 2), 50, 1000).astype(np.int64)
    costs = np.concatenate([short, lengths + 2])
    return costs[rng.permutation(n)]


def _check_cover(parts, n, skip=None):
    allidx = np.concatenate(parts)
    want = np.arange(n) if skip is None else np.flatnonzero(~skip)
    np.testing.assert_array_equal(np.sort(allidx), want)
    for p in parts:
        assert np.all(np.diff(p) > 0)                 # ascending = input order
    # contiguous: each rank's records are one run of the live records, ranks in order
    live = np.concatenate(parts)
    np.testing.assert_array_equal(live, want)


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_balance_and_cover(world_size):
    costs = _realistic()
    parts = partition(costs, world_size)
    assert len(parts) == world_size
    _check_cover(parts, len(costs))
    loads = rank_costs(costs, parts)
    assert loads.sum() == costs.sum()
    assert (loads.max() - loads.min()) / loads.max() <= 0.01
    assert np.abs(loads - costs.sum() / world_size).max() <= costs.max()  # within one record of the ideal


def test_balance_with_a_few_giants():
    # contiguous runs balance within about one record's cost: here the giants' size
    costs = _realistic(20_000, seed=3)
    costs[[5, 900, 7000]] = [30_000, 25_000, 20_000]
    loads = rank_costs(costs, partition(costs, 4))
    assert np.abs(loads - costs.sum() / 4).max() <= costs.max()


def test_deterministic():
    costs = _realistic(30_000, seed=1)
    a = partition(costs, 4)
    b = partition(costs.copy(), 4)
    c = partition(list(costs), 4)
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    # equal costs: equal contiguous runs
    eq = partition(np.full(12, 5), 3)
    assert [p.tolist() for p in eq] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_skip_mask_and_indices():
    costs = _realistic(10_000, seed=2)
    skip = np.zeros(len(costs), dtype=bool)
    skip[::3] = True
    parts = partition(costs, 4, skip=skip)
    _check_cover(parts, len(costs), skip)
    by_idx = partition(costs, 4, skip=np.flatnonzero(skip))
    for x, y in zip(parts, by_idx):
        np.testing.assert_array_equal(x, y)
    loads = rank_costs(costs, parts)
    assert (loads.max() - loads.min()) / loads.max() <= 0.01
    everything = np.ones(len(costs), dtype=bool)
    assert all(len(p) == 0 for p in partition(costs, 4, skip=everything))


def test_world_size_one():
    costs = _realistic(1000)
    (only,) = partition(costs, 1)
    np.testing.assert_array_equal(only, np.arange(1000))


def test_resume_at_another_world_size_balances_what_is_left():
    costs = _realistic(10_000, seed=4)
    done = np.zeros(len(costs), dtype=bool)
    done[:6000] = True  # an earlier run of 2 ranks did the first 60%
    parts = partition(costs, 3, skip=done)
    _check_cover(parts, len(costs), done)
    loads = rank_costs(costs, parts)
    assert np.abs(loads - costs[~done].sum() / 3).max() <= costs.max()


def test_more_ranks_than_records_and_empty():
    parts = partition(np.array([5, 1]), 4)
    assert sorted(int(i) for p in parts for i in p) == [0, 1]
    assert sum(len(p) == 0 for p in parts) == 2
    assert [len(p) for p in partition(np.array([], dtype=np.int64), 3)] == [0, 0, 0]


def test_bad_input():
    with pytest.raises(ValueError):
        partition(np.array([1, -1]), 2)
    with pytest.raises(ValueError):
        partition(np.array([1.0, np.nan]), 2)
    with pytest.raises(ValueError):
        partition(np.array([1, 2]), 0)
    with pytest.raises(ValueError):
        partition(np.array([1, 2]), 2, skip=np.array([True]))


@settings(max_examples=60, deadline=None)
@given(costs=st.lists(st.integers(0, 5000), max_size=300),
       world_size=st.integers(1, 9), data=st.data())
def test_property_cover(costs, world_size, data):
    costs = np.array(costs, dtype=np.int64)
    skip = np.array(data.draw(st.lists(st.booleans(), min_size=len(costs), max_size=len(costs))),
                    dtype=bool)
    parts = partition(costs, world_size, skip=skip)
    assert len(parts) == world_size
    _check_cover(parts, len(costs), skip)
    # no rank exceeds the average by more than the largest item
    loads = rank_costs(costs, parts)
    live = costs[~skip]
    if len(live):
        assert loads.max() <= live.sum() / world_size + live.max()


def test_plan_windows_cover_in_order_with_ramp():
    rows = np.arange(100, 400)
    costs = np.full(300, 10)
    wins = plan_windows(rows, costs, max_cost=400, ramp=True)
    np.testing.assert_array_equal(np.concatenate(wins), rows)
    sizes = [len(w) for w in wins]
    assert sizes[:3] == [5, 10, 20] and max(sizes) == 40  # 1/8, 1/4, 1/2 of the budget, then full
    capped = plan_windows(rows, costs, max_cost=10**9, max_rows=7)
    assert max(len(w) for w in capped) == 7 and len(capped) == 43
    giant = plan_windows(np.arange(3), np.array([5, 1000, 5]), max_cost=100)
    assert [w.tolist() for w in giant] == [[0], [1], [2]]  # a record over budget gets a window of its own
