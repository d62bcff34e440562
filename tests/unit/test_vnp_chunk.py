"""Chunking (spec section 1), including the short-last-chunk quirk."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virnucdist.data.fasta import FastaRecord
from virnucdist.data.index import read_fasta
from virnucdist.vnp.chunk import ChunkStats, chunk_records, chunk_spans


@pytest.mark.parametrize(
    "length, size, spans",
    [
        (1200, 500, [(0, 500), (399, 899), (798, 1200)]),
        (501, 500, [(0, 500), (250, 501)]),
        (1499, 500, [(0, 500), (499, 999), (999, 1499)]),
        (1000, 500, [(0, 500), (500, 1000)]),
        (2000, 300, [(285 * k, 285 * k + 300) for k in range(6)] + [(1710, 2000)]),
        (500, 500, [(0, 500)]),
        (1, 500, [(0, 1)]),
        (299, 300, [(0, 299)]),
        (0, 500, []),
    ],
)
def test_spec_examples(length, size, spans):
    assert chunk_spans(length, size) == spans


def test_quirk_last_chunk_shorter():
    spans = chunk_spans(2000, 300)
    assert [e - s for s, e in spans] == [300] * 6 + [290]


def test_bad_chunk_size():
    with pytest.raises(ValueError):
        chunk_spans(10, 0)


def _reference_spans(length: int, c: int) -> list[tuple[int, int]]:
    """A literal transcription of the spec's formula, for comparison."""
    n = math.ceil(length / c)
    r = n * c - length
    q = int(r / n)
    u = r - q * (n - 1)
    s = [q + 1] * u + [q] * max(0, n - 1 - u) + [0]
    out = []
    for k in range(n):
        start = k * c - sum(s[:k])
        out.append((start, min(start + c, length)))
    return out


@settings(max_examples=300, deadline=None)
@given(length=st.integers(1, 20000), size=st.sampled_from([300, 500]) | st.integers(1, 700))
def test_span_properties(length, size):
    spans = chunk_spans(length, size)
    assert len(spans) == math.ceil(length / size)
    assert spans[0][0] == 0 and spans[-1][1] == length
    covered_to = 0
    prev_start = -1
    for start, end in spans:
        assert 0 <= start < end <= length
        assert end - start <= size
        assert start >= prev_start
        assert start <= covered_to  # no gap: every base [0, L) is in some chunk
        covered_to = max(covered_to, end)
        prev_start = start
    assert covered_to == length
    if length > size:
        assert spans == _reference_spans(length, size)
        assert all(end - start == size for start, end in spans[:-1])


def test_chunk_records_ids_case_and_empty():
    stats = ChunkStats()
    recs = [("r1", "acgT" * 150), ("empty", ""), FastaRecord("r2", "r2 desc", "ACG")]
    out = list(chunk_records(recs, 500, stats))
    assert [cid for cid, _ in out] == ["r1_chunk_1", "r1_chunk_2", "r2_chunk_1"]
    assert out[0][1] == ("acgT" * 150)[:500]
    assert out[1][1] == ("acgT" * 150)[299:600]  # L=600, c=500: quirk gives [299, 600)
    assert out[2][1] == "ACG"
    assert (stats.reads, stats.chunks, stats.empty_reads, stats.empty_read_ids) == (3, 3, 1, ["empty"])


def test_reference_chunking(shared_dir):
    ref = shared_dir / "data" / "virnucpro-reference"
    got = list(chunk_records(read_fasta(ref / "test_with_orfs.fa"), 500))
    want = [(r.id, r.seq) for r in read_fasta(ref / "test_with_orfs_chunked500.fa")]
    assert want and got == want
