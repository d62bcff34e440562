"""vnp/outputs.py: the result files written from columnar read blocks are, byte for byte, what the
per-frame rules (vnp/consensus.py, tests/_vnp_reference.py) write one frame and one read at a time."""

from __future__ import annotations

import io

import numpy as np

from _vnp_reference import ReadFrames, add_scored, summarize_read

from virnucdist.data.store import IdColumn, encode_ids
from virnucdist.vnp.consensus import (
    PREDICTION_HEADER,
    SUMMARY_HEADER,
    ChunkConsensus,
    Consensus,
    format_score,
    format_scores,
    prediction_line,
)
from virnucdist.vnp.outputs import ReadBlock, write_result_files
from virnucdist.vnp.pairs import PairWriter
from virnucdist.vnp.translate import FRAME_NAMES


def test_format_scores_is_format_score_of_each_value():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.random(5000), rng.random(500) * 1e-5, rng.random(100) * 1e-30,
                        [0.0, 1.0, 0.5, 1e-4, 9.999e-5, 1e-45, 3.4e38, 1e16, 1e15, 0.1, 2.0 / 3, 1 - 2 ** -24]])
    v32 = v.astype(np.float32)
    assert format_scores(v32) == [format_score(x) for x in v32.tolist()]
    assert format_scores(v) == [format_score(x) for x in v.tolist()]  # float64 in: written as float32


def test_chunk_consensus_is_consensus_incl_repeated_ids_and_string_order():
    rng = np.random.default_rng(1)
    acc, ref = ChunkConsensus(), Consensus()
    for block in range(3):
        keys = [f"r{rng.integers(0, 40)}_chunk_{rng.integers(1, 12)}" for _ in range(60)]  # repeats, chunk_10 < chunk_2
        s = rng.random((60, 2)).astype(np.float32)
        if block == 1:
            s[:5] = 0.5  # ties: virus
        acc.add(keys, s[:, 0], s[:, 1])
        for k, (a, b) in zip(keys, s.tolist()):
            ref.add(k + "F1", a, b)
    assert list(acc.decisions()) == ref.decisions()
    assert list(ChunkConsensus().decisions()) == []


def _reads(rng, n: int, paired: bool):
    """Random reads: (id, mate, n_chunks, [(chunk, frame code, score1, score2)]); some empty, some without frames,
    a chunk's frames not always together, a repeated id, mates apart."""
    reads = []
    for i in range(n):
        nc = int(rng.choice([0, 1, 1, 2, 12]))
        frames = []
        if nc:
            for _ in range(int(rng.integers(0, 7))):
                s = rng.random(2).astype(np.float32)
                frames.append((int(rng.integers(0, nc)), int(rng.integers(0, 6)), s[0], s[1]))
            frames.sort(key=lambda f: f[0]) if rng.random() < 0.8 else None  # usually in chunk order
        rid = f"read{i}" if i != 7 else "read3"  # an id given twice: its chunks merge in the consensus file
        mate = 0
        if paired:
            rid, mate = (f"p{i // 2}/{i % 2 + 1}", i % 2 + 1) if i < n - 6 else (f"q{(n - i) % 3}/{1 + (i > n - 4)}",
                                                                                 1 + (i > n - 4))
            if i in (10, 11):  # a pair id given twice
                rid = f"p0/{mate}"
        reads.append((rid, mate, nc, frames))
    # a chunk's frames apart: chunk 1 is others by its two frames together, virus by its second frame alone
    f32 = np.float32
    reads[0] = (reads[0][0], reads[0][1], 2, [(0, 0, f32(0.9), f32(0.1)), (1, 2, f32(0.7), f32(0.3)),
                                               (0, 4, f32(0.2), f32(0.8))])
    for i, s in ((20, 0.5), (21, 0.25)):  # a tie over a pair's frames is virus (or two reads' own ties)
        reads[i] = (reads[i][0], reads[i][1], 1, [(0, i % 6, f32(s), f32(s))])
    return reads


def _reference(reads, paired: bool) -> dict:
    """The files as written one frame and one read at a time with the per-frame rules."""
    pred, summ, pair = io.StringIO(), io.StringIO(), io.StringIO()
    pred.write("\t".join(PREDICTION_HEADER) + "\n")
    summ.write("\t".join(SUMMARY_HEADER) + "\n")
    pairs, acc = PairWriter(pair), Consensus()
    for rid, mate, nc, frames in reads:
        fids = [f"{rid}_chunk_{k + 1}{FRAME_NAMES[c]}" for k, c, _, _ in frames]
        s1 = [float(f[2]) for f in frames]
        s2 = [float(f[3]) for f in frames]
        for fid, a, b in zip(fids, s1, s2):
            pred.write(prediction_line(fid, a, b))
            acc.add(fid, a, b)
        line = summarize_read(ReadFrames(rid, nc, tuple((f[:-2], a, b) for f, a, b in zip(fids, s1, s2))))
        summ.write(line.to_line() + "\n")
        add_scored(pairs, rid, mate, nc, s1, s2, line.call)
    out = {"prediction_results.txt": pred.getvalue(), "read_summary.tsv": summ.getvalue()}
    cons = io.StringIO()
    cons.write("Modified_ID\tIs_Virus\n" + "".join(f"{k}\t{v}\n" for k, v in acc.decisions()))
    out["prediction_results_highestscore.csv"] = cons.getvalue()
    if paired:
        pairs.close()
        out["pair_summary.tsv"] = pair.getvalue()
    return out


def _blocks(reads, size: int):
    for a in range(0, len(reads), size):
        part = reads[a:a + size]
        fr = [f for r in part for f in r[3]]
        yield ReadBlock([r[0] for r in part], np.array([r[2] for r in part]), np.array([len(r[3]) for r in part]),
                        np.array([f[0] for f in fr], np.int32), np.array([f[1] for f in fr], np.uint8),
                        np.array([f[2] for f in fr], np.float32), np.array([f[3] for f in fr], np.float32),
                        np.array([r[1] for r in part], np.int8))


def test_result_files_from_blocks_are_the_per_frame_rules_files(tmp_path):
    rng = np.random.default_rng(2)
    for paired in (False, True):
        reads = _reads(rng, 300, paired)
        want = _reference(reads, paired)
        for size in (1, 17, 1000):  # block boundaries do not show in the files
            out = tmp_path / f"{paired}-{size}"
            out.mkdir()
            counts = write_result_files(out, lambda: _blocks(reads, size), paired=paired)
            got = {name: (out / name).read_text() for name in want}
            assert got == want
            assert counts["frames"] == sum(len(r[3]) for r in reads)
            assert counts["empty"] == sum(r[2] == 0 for r in reads)
            assert sorted(p.name for p in out.iterdir()) == sorted(want)  # no .tmp left


def test_id_column_slices_decode_ascii_and_utf8():
    for ids in (["r1", "read_2", "", "x/1"], ["r1", "séq_2", "", "ü/2", "plain"]):
        col = IdColumn(*encode_ids(ids))
        assert col[0:len(ids)] == ids and col[1:3] == ids[1:3] and col[3:1] == [] and col[::2] == ids[::2]
        assert list(col) == ids
