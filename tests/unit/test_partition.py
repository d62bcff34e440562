import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucdist.sharding import partition, rank_costs, rank_share
from virnucdist.sharding.partition import rank_of


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


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_balance_and_cover(world_size):
    costs = _realistic()
    parts = partition(costs, world_size)
    assert len(parts) == world_size
    _check_cover(parts, len(costs))
    loads = rank_costs(costs, parts)
    assert loads.sum() == costs.sum()
    assert (loads.max() - loads.min()) / loads.max() <= 0.01
    assert (loads.max() - loads.min()) <= costs.max()


def test_balance_with_a_few_giants():
    costs = _realistic(20_000, seed=3)
    costs[[5, 900, 7000]] = [30_000, 25_000, 20_000]
    loads = rank_costs(costs, partition(costs, 4))
    assert (loads.max() - loads.min()) / loads.max() <= 0.01


def test_hybrid_head_path_used_and_balanced():
    # small lpt_tail forces the snake head + LPT tail path
    costs = _realistic(50_000, seed=5)
    r = rank_of(costs, 8, lpt_tail=100)
    loads = np.bincount(r, weights=costs, minlength=8)
    assert (loads.max() - loads.min()) / loads.max() <= 0.01
    full = rank_of(costs, 8)
    loads_full = np.bincount(full, weights=costs, minlength=8)
    assert (loads_full.max() - loads_full.min()) <= costs.max()


def test_deterministic():
    costs = _realistic(30_000, seed=1)
    a = partition(costs, 4)
    b = partition(costs.copy(), 4)
    c = partition(list(costs), 4)
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    # ties broken by index: equal costs deal out in index order
    eq = partition(np.full(10, 5), 3)
    assert [p.tolist() for p in eq] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


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


def test_world_size_one_and_rank_share():
    costs = _realistic(1000)
    (only,) = partition(costs, 1)
    np.testing.assert_array_equal(only, np.arange(1000))
    skip = np.zeros(1000, dtype=bool)
    skip[10:20] = True
    parts = partition(costs, 3, skip=skip)
    for r in range(3):
        np.testing.assert_array_equal(rank_share(costs, 3, r, skip=skip), parts[r])
    with pytest.raises(ValueError):
        rank_share(costs, 3, 3)


def test_more_ranks_than_records_and_empty():
    parts = partition(np.array([5, 1]), 4)
    assert [p.tolist() for p in parts] == [[0], [1], [], []]
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
    # LPT bound: no rank exceeds the average by more than the largest item
    loads = rank_costs(costs, parts)
    live = costs[~skip]
    if len(live):
        assert loads.max() <= live.sum() / world_size + live.max()
