"""Token-budget batch planning, packing into PackedBatch, the worker loader, splitting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucdist.data.fasta import write_fasta
from virnucdist.models.esm2 import CLS, EOS, EsmTokenizer
from virnucdist.packing import PackedBatch, PackedBatchLoader, TokenBudgetSampler, pack_token_arrays, split_batch
from virnucdist.data import SequenceIndex
from _helpers import AA


def _check_packed(b: PackedBatch, arrays: list[np.ndarray], rows) -> None:
    """Every invariant of a PackedBatch, checked against the per-sequence arrays it came from."""
    lengths = [len(a) for a in arrays]
    assert b.cu_seqlens.dtype == torch.int32
    assert b.cu_seqlens.tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    assert b.max_seqlen == (max(lengths) if lengths else 0)
    assert b.rows.tolist() == list(rows)
    assert b.num_tokens == sum(lengths) and b.num_seqs == len(arrays)
    cu = b.cu_seqlens.tolist()
    for i, a in enumerate(arrays):
        s, e = cu[i], cu[i + 1]
        assert b.tokens[s:e].tolist() == a.tolist()
        assert b.positions[s:e].tolist() == list(range(len(a)))  # restart at 0 per sequence
        assert (b.seg[s:e] == i).all()


# ----------------------------------------------------------------------------- sampler


def test_sampler_hand_example():
    rows = np.array([10, 11, 12, 13, 14, 15])
    toks = np.array([3, 9, 4, 12, 4, 1])
    s = TokenBudgetSampler(rows, toks, budget=10)
    got = list(s)
    # longest first, ties by row: 13:12 (oversize, alone), 11:9, 12:4, 14:4, 10:3, 15:1
    assert got == [[13], [11], [12, 14], [10, 15]]
    assert len(s) == 4
    assert s.planned_tokens == int(toks.sum())


def test_sampler_max_seqs():
    rows = np.arange(10)
    s = TokenBudgetSampler(rows, np.ones(10, dtype=np.int64), budget=1000, max_seqs=3)
    assert [len(b) for b in s] == [3, 3, 3, 1]


def test_sampler_rejects_bad_budget():
    with pytest.raises(ValueError):
        TokenBudgetSampler(np.arange(3), np.ones(3), budget=0)


@settings(max_examples=150, deadline=None)
@given(
    toks=st.lists(st.integers(min_value=1, max_value=300), min_size=0, max_size=200),
    budget=st.integers(min_value=1, max_value=1000),
    seed=st.integers(0, 2**16),
)
def test_sampler_properties(toks, budget, seed):
    rng = np.random.default_rng(seed)
    rows = rng.permutation(10 * len(toks) + 1)[: len(toks)]  # arbitrary distinct row numbers
    toks = np.asarray(toks, dtype=np.int64)
    cost = dict(zip(rows.tolist(), toks.tolist()))
    s = TokenBudgetSampler(rows, toks, budget)
    batches = list(s)
    flat = [r for b in batches for r in b]
    # every row exactly once
    assert sorted(flat) == sorted(rows.tolist())
    assert len(flat) == len(set(flat))
    for b in batches:
        assert b, "no empty batches"
        total = sum(cost[r] for r in b)
        assert total <= budget or (len(b) == 1 and cost[b[0]] > budget)
    # longest first, ties by row: the concatenation is sorted by (-tokens, row)
    keys = [(-cost[r], r) for r in flat]
    assert keys == sorted(keys)
    # greedy: a batch is cut only when the next record would not have fit
    for b, nxt in zip(batches, batches[1:]):
        assert sum(cost[r] for r in b) + cost[nxt[0]] > budget
    # deterministic (also from a shuffled presentation of the same records)
    perm = rng.permutation(len(rows))
    assert list(TokenBudgetSampler(rows[perm], toks[perm], budget)) == batches
    assert list(s) == batches


# ----------------------------------------------------------------------------- pack_token_arrays


def test_pack_hand_example():
    arrays = [np.array([0, 5, 6, 2]), np.array([0, 2]), np.array([0, 7, 8, 9, 10, 2])]
    b = pack_token_arrays(arrays, [7, 3, 9], n_truncated=1)
    assert b.tokens.tolist() == [0, 5, 6, 2, 0, 2, 0, 7, 8, 9, 10, 2]
    assert b.positions.tolist() == [0, 1, 2, 3, 0, 1, 0, 1, 2, 3, 4, 5]
    assert b.seg.tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2]
    assert b.cu_seqlens.tolist() == [0, 4, 6, 12]
    assert b.max_seqlen == 6
    assert b.rows.tolist() == [7, 3, 9]
    assert b.n_truncated == 1
    assert b.tokens.dtype == torch.int64 and b.positions.dtype == torch.int64 and b.rows.dtype == torch.int64


def test_pack_empty():
    b = pack_token_arrays([], [])
    assert b.num_tokens == 0 and b.num_seqs == 0 and b.cu_seqlens.tolist() == [0] and b.max_seqlen == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 32), min_size=1, max_size=40), min_size=1, max_size=30))
def test_pack_properties(seqs):
    arrays = [np.asarray(s, dtype=np.int64) for s in seqs]
    rows = list(range(100, 100 + len(arrays)))
    b = pack_token_arrays(arrays, rows)
    _check_packed(b, arrays, rows)
    assert b.tokens.tolist() == [t for s in seqs for t in s]  # concatenated in order


def test_packed_batch_to_keeps_fields():
    b = pack_token_arrays([np.array([0, 5, 2]), np.array([0, 2])], [1, 2], n_truncated=2)
    c = b.to("cpu")
    assert c.max_seqlen == 3 and c.n_truncated == 2 and torch.equal(c.cu_seqlens, b.cu_seqlens)


# ----------------------------------------------------------------------------- split_batch


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=2, max_size=25), st.integers(0, 5))
def test_split_batch_halves(lengths, n_trunc):
    rng = np.random.default_rng(len(lengths))
    arrays = [rng.integers(4, 30, size=n) for n in lengths]
    rows = list(range(len(arrays)))
    b = pack_token_arrays(arrays, rows, n_truncated=n_trunc)
    first, second = split_batch(b)
    k = len(arrays) // 2
    _check_packed(first, arrays[:k], rows[:k])
    _check_packed(second, arrays[k:], rows[k:])
    # re-concatenation gives back the original
    assert torch.equal(torch.cat([first.tokens, second.tokens]), b.tokens)
    assert torch.equal(torch.cat([first.positions, second.positions]), b.positions)
    assert torch.equal(torch.cat([first.rows, second.rows]), b.rows)
    assert torch.equal(torch.cat([first.seg, second.seg + first.num_seqs]), b.seg)
    assert torch.equal(torch.cat([first.cu_seqlens[:-1], second.cu_seqlens + first.num_tokens]), b.cu_seqlens)
    assert second.cu_seqlens.dtype == torch.int32 and first.cu_seqlens.dtype == torch.int32


def test_split_single_sequence_refused():
    with pytest.raises(ValueError):
        split_batch(pack_token_arrays([np.array([0, 4, 2])], [0]))


# ----------------------------------------------------------------------------- loader over a real index


@pytest.fixture(scope="module")
def protein_index(tmp_path_factory):
    d = tmp_path_factory.mktemp("packing")
    rng = np.random.default_rng(1)
    lengths = [int(x) for x in rng.integers(1, 120, size=150)] + [1, 2, 300]
    records = [(f"p{i}", "".join(rng.choice(AA, size=n))) for i, n in enumerate(lengths)]
    records[5] = ("p5", records[5][1].lower())  # lowercase maps to the same ids
    path = d / "prot.fa"
    write_fasta(path, records, width=60)
    idx = SequenceIndex.build([path])
    yield idx
    idx.close()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_yields_every_row_once_with_right_tokens(protein_index, num_workers):
    idx = protein_index
    tok = EsmTokenizer(truncation_seq_length=100)  # truncates the 120/300-residue ones
    rows = np.arange(0, len(idx), 1)[::-1].copy()  # planned rows in any order
    rows = rows[rows % 7 != 3]  # a subset, not all of the index
    budget = 777
    loader = PackedBatchLoader(idx.read, rows, idx.length[rows], tok, budget, num_workers=num_workers,
                               prefetch_factor=2)
    seen: list[int] = []
    n_trunc = 0
    for b in loader:
        arrays = [tok.encode(idx.read(int(r))) for r in b.rows]
        _check_packed(b, arrays, b.rows.tolist())
        assert b.num_tokens <= budget or b.num_seqs == 1
        assert b.tokens[b.cu_seqlens[:-1].long()].eq(CLS).all() and b.tokens[b.cu_seqlens[1:].long() - 1].eq(EOS).all()
        n_trunc += b.n_truncated
        seen += b.rows.tolist()
    assert sorted(seen) == sorted(rows.tolist()) and len(seen) == len(set(seen))
    # the order of rows is the sampler's plan
    assert seen == [r for batch in loader.sampler for r in batch]
    assert n_trunc == int((idx.length[rows] > 100).sum()) > 0
    expected_tokens = int(sum(min(int(n), 100) + 2 for n in idx.length[rows]))
    assert loader.tokens_seen == expected_tokens == loader.sampler.planned_tokens
    assert loader.records_seen == len(rows)
    assert loader.batches_seen == len(loader) > 1
    # the metric uses the budget actually passed (777), not a default
    assert loader.packing_efficiency == pytest.approx(expected_tokens / (loader.batches_seen * budget))
    assert loader.packing_efficiency <= 1.0


def test_loader_efficiency_zero_before_iteration(protein_index):
    tok = EsmTokenizer()
    loader = PackedBatchLoader(protein_index.read, np.arange(5), protein_index.length[:5], tok, 100, num_workers=0)
    assert loader.packing_efficiency == 0.0


def test_loader_detects_lost_records(protein_index):
    """count in == count out: a sampler that silently drops a planned batch is caught."""
    tok = EsmTokenizer()
    rows = np.arange(20)
    loader = PackedBatchLoader(protein_index.read, rows, protein_index.length[rows], tok, 200, num_workers=0)
    loader.sampler.batches = loader.sampler.batches[:-1]
    with pytest.raises(RuntimeError, match="lost records"):
        for _ in loader:
            pass
