"""Prediction table, per-chunk consensus and per-read summary (spec section 6)."""

from __future__ import annotations

import numpy as np
import pytest

from _vnp_reference import ReadFrames, read_of_chunk, summarize_read, write_read_summary

from virnucdist.vnp.consensus import (
    PredictionRow,
    chunk_of,
    consensus,
    format_score,
    read_consensus,
    read_predictions,
    write_consensus,
    write_predictions,
)


def group_by_read(chunk_counts, rows):
    """Test helper (the library joins reads and frames from its shards, prediction.py).

    Join per-read chunk counts (input order, empty reads with 0) with scored frame rows.

    ``rows`` are ``(frame_id, score1, score2)`` (or :class:`PredictionRow`); a frame's
    chunk is ``frame_id[:-2]`` and its read is the chunk ID up to the last ``_chunk_``.
    Yields one :class:`ReadFrames` per entry of ``chunk_counts``, in that order. A frame
    whose read is not listed raises ``ValueError`` (it would silently vanish otherwise).
    """
    frames: dict[str, list[tuple[str, float, float]]] = {}
    for row in rows:
        if isinstance(row, PredictionRow):
            seq_id, s1, s2 = row.seq_id, row.score1, row.score2
        else:
            seq_id, s1, s2 = row
        cid = chunk_of(seq_id)
        frames.setdefault(read_of_chunk(cid), []).append((cid, s1, s2))
    counts = list(chunk_counts)
    listed = {read_id for read_id, _ in counts}
    unknown = [r for r in frames if r not in listed]
    if unknown:
        raise ValueError(f"scored frames for {len(unknown)} read(s) not in the read list, e.g. {unknown[0]!r}")
    for read_id, n in counts:
        yield ReadFrames(read_id, n, tuple(frames.get(read_id, ())))


@pytest.fixture
def ref(shared_dir):
    return shared_dir / "data" / "virnucpro-reference"


def test_reference_consensus_byte_identical(ref, tmp_path):
    out = tmp_path / "prediction_results_highestscore.csv"
    write_consensus(out, consensus(read_predictions(ref / "prediction_results.txt")))
    assert out.read_bytes() == (ref / "prediction_results_highestscore.csv").read_bytes()
    assert read_consensus(out) == [("synthetic_seq_1_chunk_1", True), ("synthetic_seq_2_chunk_1", True)]


def test_reference_predictions_round_trip(ref, tmp_path):
    rows = list(read_predictions(ref / "prediction_results.txt"))
    assert rows[2] == PredictionRow("synthetic_seq_2_chunk_1R1", "others", np.float32("0.5501341"), np.float32("0.4498659"))
    assert all(isinstance(r.score1, np.float32) for r in rows)
    out = tmp_path / "prediction_results.txt"
    assert write_predictions(out, [(r.seq_id, r.score1, r.score2) for r in rows]) == 4
    assert out.read_bytes() == (ref / "prediction_results.txt").read_bytes()


@pytest.mark.parametrize("text", ["0.12100612", "0.8789939", "0.0011595711", "0.9988405", "0.06045397", "0.93954605"])
def test_format_score_reference_values(text):
    assert format_score(np.float32(text)) == text
    assert format_score(float(np.float32(text))) == text  # a float64 holding the float32 value


def test_format_score_rounds_to_float32():
    assert format_score(0.1) == "0.1"
    assert format_score(1 / 3) == "0.33333334"
    assert format_score(1.0) == "1.0"


def test_string_sort_and_per_chunk():
    rows = [
        ("r_chunk_2F1", 0.9, 0.1),
        ("r_chunk_10F1", 0.2, 0.8),
        ("r_chunk_2R3", 0.6, 0.4),
        ("r_chunk_1F2", 0.3, 0.7),
    ]
    assert consensus(rows) == [("r_chunk_1", True), ("r_chunk_10", True), ("r_chunk_2", False)]


def test_max_over_frames_and_tie_is_true():
    # max score2 = 0.6 (F1), max score1 = 0.6 (F2): a tie counts as virus.
    assert consensus([("c_chunk_1F1", 0.4, 0.6), ("c_chunk_1F2", 0.6, 0.4)]) == [("c_chunk_1", True)]
    assert consensus([("c_chunk_1F1", 0.41, 0.59), ("c_chunk_1F2", 0.6, 0.4)]) == [("c_chunk_1", False)]


def test_read_predictions_rejects_bad_files(tmp_path):
    bad = tmp_path / "p.txt"
    bad.write_text("id\tscore\n")
    with pytest.raises(ValueError, match="header"):
        list(read_predictions(bad))
    bad.write_text("Sequence_ID\tPrediction\tscore1\tscore2\nx_chunk_1F1\tvirus\tabc\t0.5\n")
    with pytest.raises(ValueError, match="line 2"):
        list(read_predictions(bad))


def test_read_of_chunk():
    assert read_of_chunk("my_chunk_read_chunk_12") == "my_chunk_read"


def test_read_summary(tmp_path):
    counts = [("a", 2), ("b", 1), ("c", 3), ("e", 0)]
    rows = [
        ("a_chunk_1F1", 0.9, 0.1),
        ("a_chunk_2R1", 0.3, 0.7),  # chunk 2 of read a is virus
        ("b_chunk_1F1", 0.8, 0.2),
        ("b_chunk_1F2", 0.55, 0.45),
    ]
    reads = list(group_by_read(counts, rows))
    assert [r.read_id for r in reads] == ["a", "b", "c", "e"]
    assert reads[0].frames == (("a_chunk_1", 0.9, 0.1), ("a_chunk_2", 0.3, 0.7))
    assert [summarize_read(r).call for r in reads] == ["virus", "others", "no_frame", "empty"]
    out = tmp_path / "read_summary.tsv"
    assert write_read_summary(out, reads) == {"virus": 1, "others": 1, "no_frame": 1, "empty": 1}
    assert out.read_text().splitlines() == [
        "read_id\tchunks\tkept_frames\tbest_virus_score\tcall",
        "a\t2\t2\t0.7\tvirus",
        "b\t1\t2\t0.45\tothers",
        "c\t3\t0\tNA\tno_frame",
        "e\t0\t0\tNA\tempty",
    ]


def test_summary_uses_per_chunk_rule_not_per_read():
    # No chunk is virus -> others.
    read = ReadFrames("r", 2, (("r_chunk_1", 0.9, 0.1), ("r_chunk_2", 0.8, 0.7)))
    assert summarize_read(read).call == "others"
    # Over the whole read max(score2)=0.7 < max(score1)=0.9, but chunk 2 alone is virus.
    read = ReadFrames("r", 2, (("r_chunk_1", 0.9, 0.1), ("r_chunk_2", 0.3, 0.7)))
    assert summarize_read(read).call == "virus"


def test_group_by_read_unknown_read():
    with pytest.raises(ValueError, match="not in the read list"):
        list(group_by_read([("a", 1)], [("zz_chunk_1F1", 0.5, 0.5)]))
