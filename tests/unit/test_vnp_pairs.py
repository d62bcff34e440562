"""vnp/pairs.py: the pair call is VirNucPro's max/max consensus rule over both mates' pooled frames."""

from __future__ import annotations

import io

import numpy as np

from _vnp_reference import add_scored, chunk_is_virus
from virnucdist.vnp.pairs import PAIR_HEADER, PairWriter, pair_call, pair_id


def test_pair_call_pools_both_mates_frames():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n1, n2 = rng.integers(0, 4, 2)
        a = rng.random((n1 + n2, 1)).astype(np.float32)
        s1, s2 = a[:, 0].tolist(), (1 - a[:, 0]).tolist()
        call = pair_call(2, s1, s2)
        if n1 + n2 == 0:
            assert call == "no_frame"
        else:  # the rule of one chunk's frames, over the union of the mates' frames
            assert call == ("virus" if chunk_is_virus(zip(s1, s2)) else "others")
    # one mate virus by its own frames is not enough when the other mate's frames score higher as others
    assert pair_call(2, [0.4, 0.9], [0.6, 0.1]) == "others"
    assert pair_call(2, [0.5], [0.5]) == "virus"  # a tie is virus, as in prediction_results_highestscore.csv
    assert pair_call(0, [], []) == "empty"


def test_pair_writer_lines_and_counts():
    buf = io.StringIO()
    w = PairWriter(buf)
    add_scored(w, "a/1", 1, 1, [0.2], [0.8], "virus")
    add_scored(w, "a/2", 2, 1, [], [], "no_frame")
    add_scored(w, "single", 0, 1, [0.9], [0.1], "others")  # not part of a pair: no line
    add_scored(w, "b/1", 1, 0, [], [], "empty")
    add_scored(w, "b/2", 2, 0, [], [], "empty")
    add_scored(w, "c/1", 1, 1, [0.7, 0.3], [0.3, 0.7], "virus")
    add_scored(w, "c/2", 2, 1, [0.95], [0.05], "others")
    lines = [ln.split("\t") for ln in buf.getvalue().splitlines()]
    assert lines == [list(PAIR_HEADER), ["a", "1", "0.8", "virus", "virus", "no_frame"],
                     ["b", "0", "NA", "empty", "empty", "empty"], ["c", "3", "0.7", "others", "virus", "others"]]
    # mates apart (a coordinate-sorted BAM): the line comes with the later mate, mate 1's call first
    add_scored(w, "e/2", 2, 1, [0.9], [0.1], "others")
    add_scored(w, "f/1", 1, 1, [], [], "no_frame")
    add_scored(w, "e/1", 1, 1, [0.1], [0.9], "virus")
    assert buf.getvalue().splitlines()[-1].split("\t") == ["e", "2", "0.9", "virus", "virus", "others"]
    assert w.close() == {"pairs": 4, "virus": 2, "others": 1, "no_frame": 0, "empty": 1, "unpaired_mates": 1}
    assert pair_id("x/1") == pair_id("x/2") == pair_id("x") == "x"
