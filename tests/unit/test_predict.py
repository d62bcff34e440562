"""``virnucdist.predict`` against an independent frame-by-frame reference (tiny models of the real widths)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from _predict_data import make_reads, reference, tiny_models, write_fasta_wrapped

import virnucdist.tasks.predict as predict_mod
from virnucdist import cli
from virnucdist.errors import UserError
from virnucdist.data.fasta import FastaError
from virnucdist.launch.entry import run_entrypoint
from virnucdist.models.esm2 import ESM2Config
from virnucdist.packing import pack_pairs
from virnucdist.tasks.predict import PredictConfig, predict
from virnucdist.models.random_init import random_esm2
from _formats import save_fair_esm_checkpoint
from virnucdist.vnp.chunk import chunk_records
from virnucdist.vnp.consensus import (
    PREDICTION_HEADER,
    chunk_of,
    consensus,
    read_consensus,
    read_predictions,
)
from _vnp_reference import ReadFrames, summarize_read
from virnucdist.vnp.translate import translate_records
from virnucdist.writers import scan_shards

RESULT_FILES = ("prediction_results.txt", "prediction_results_highestscore.csv", "read_summary.tsv")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    reads = make_reads(seed=0)
    fasta = write_fasta_wrapped(tmp_path_factory.mktemp("in") / "reads.fa", reads)
    models = tiny_models()
    return {"reads": reads, "fasta": fasta, "models": models, "ref": reference(reads, 300, models)}


def config(data, out, **kw) -> PredictConfig:
    m = data["models"]
    base = dict(inputs=(str(data["fasta"]),), chunk_size=300, classifier=str(m["classifier"]), esm_model=str(m["esm"]),
                dnabert_model=str(m["dnabert"]), output_dir=str(out), num_workers=2, window_records=7,
                toks_per_batch=1000, quiet=True, device="cpu")
    base.update(kw)
    return PredictConfig(**base)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = predict(config(data, out, keep_intermediate=True))
    return out, result


def test_predictions_match_reference(run, data):
    out, result = run
    rows = list(read_predictions(out / "prediction_results.txt"))
    ref = data["ref"]
    assert len(ref) > 20  # the ORF reads make sure frames are kept
    assert [r.seq_id for r in rows] == [f["id"] for f in ref]  # ids and order exactly
    np.testing.assert_allclose([r.score1 for r in rows], [f["score1"] for f in ref], atol=1e-5, rtol=0)
    np.testing.assert_allclose([r.score2 for r in rows], [f["score2"] for f in ref], atol=1e-5, rtol=0)
    assert all(r.prediction == ("virus" if r.score2 > r.score1 else "others") for r in rows)
    assert (out / "prediction_results.txt").read_text().splitlines()[0] == "\t".join(PREDICTION_HEADER)
    assert result.counts["frames"] == len(ref)


def test_scores_match_reference_with_an_attention_layer(data, tmp_path):
    """The same check with a 2560-wide ESM-2 layer (attention over packed proteins) on part of the reads."""
    reads = [(rid, seq[:350]) for rid, seq in data["reads"][:13]]  # ~13 frames: one at a time costs ~0.3 s each
    models = tiny_models(esm_layers=1)
    ref = reference(reads, 300, models)
    assert len(ref) >= 8 and any(f["id"].endswith(("R1", "R2", "R3")) for f in ref)
    fasta = write_fasta_wrapped(tmp_path / "r.fa", reads)
    predict(config(data, tmp_path / "out", inputs=(str(fasta),), esm_model=str(models["esm"]), num_workers=0,
                   window_records=5, toks_per_batch=300))
    rows = list(read_predictions(tmp_path / "out" / "prediction_results.txt"))
    assert [r.seq_id for r in rows] == [f["id"] for f in ref]
    np.testing.assert_allclose([[r.score1, r.score2] for r in rows], [[f["score1"], f["score2"]] for f in ref],
                               atol=1e-5, rtol=0)


def test_consensus_and_read_summary(run, data):
    out, _ = run
    rows = list(read_predictions(out / "prediction_results.txt"))
    assert read_consensus(out / "prediction_results_highestscore.csv") == consensus(rows)
    assert {k for k, _ in consensus(rows)} == {chunk_of(f["id"]) for f in data["ref"]}
    lines = (out / "read_summary.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["read_id", "chunks", "kept_frames", "best_virus_score", "call"]
    table = [ln.split("\t") for ln in lines[1:]]
    assert [t[0] for t in table] == [rid for rid, _ in data["reads"]]  # every read, input order
    by_read: dict[str, list] = {}
    for r in rows:
        by_read.setdefault(chunk_of(r.seq_id).rpartition("_chunk_")[0], []).append(
            (chunk_of(r.seq_id), r.score1, r.score2))
    for (rid, seq), t in zip(data["reads"], table):
        n_chunks = len(list(chunk_records([(rid, seq)], 300)))
        want = summarize_read(ReadFrames(rid, n_chunks, tuple(by_read.get(rid, ()))))
        assert "\t".join(t) == want.to_line()
    calls = {t[0]: t[4] for t in table}
    assert calls["empty_read"] == "empty"
    assert "no_frame" in calls.values() and "virus" in calls.values()


def test_keep_intermediate_equals_stage_cli(run, data, tmp_path):
    out, _ = run
    assert cli.main(["chunk", str(data["fasta"]), "--chunk-size", "300", "-o", str(tmp_path / "c.fa")]) == 0
    assert cli.main(["translate", str(tmp_path / "c.fa")]) == 0
    assert (out / "chunked.fa").read_bytes() == (tmp_path / "c.fa").read_bytes()
    assert (out / "identified_nucleotide.fa").read_bytes() == (tmp_path / "c_identified_nucleotide.fa").read_bytes()
    assert (out / "identified_protein.faa").read_bytes() == (tmp_path / "c_identified_protein.faa").read_bytes()
    ref = data["ref"]
    for name, key, dim in (("nucleotide_embeddings.h5", "nuc", 768), ("protein_embeddings.h5", "prot", 2560)):
        with h5py.File(out / name, "r") as f:
            assert f["ids"].asstr()[:].tolist() == [r["id"] for r in ref]
            assert f["embeddings"].shape == (len(ref), dim)
            np.testing.assert_allclose(f["embeddings"][:], np.stack([r[key] for r in ref]), atol=1e-4, rtol=1e-4)
            assert f.attrs["chunk_size"] == 300


def test_run_report(run, data):
    out, _ = run
    rep = json.loads((out / "run_report.json").read_text())
    assert rep["task"] == "predict"
    assert rep["summary"]["sequences"] == sum(1 for _, seq in data["reads"] if seq)  # reads computed
    assert rep["ranks"][0]["batches"] > 1 and rep["skipped"]["empty_count"] == 1
    assert rep["skipped"]["empty"] == ["empty_read"]
    assert rep["counts"]["empty"] == 1 and rep["counts"]["reads"] == len(data["reads"])
    assert rep["counters"]["frames"] == len(data["ref"])
    assert 0 < rep["ranks"][0]["packing_efficiency"] <= 1
    # frames whose nucleotide record holds N (DNABERT-S [UNK]) are counted, not dropped
    frames = list(translate_records(chunk_records(data["reads"], 300)))
    with_n = [f.id for f in frames if set(f.nucleotide) - set("ACGT")]
    assert with_n and rep["summary"]["records_with_unknown_letters"] == len(with_n)
    assert set(rep["ranks"][0]["unknown_letter_examples"]) <= set(with_n)


def test_resume_after_crash_and_rerun(run, data, tmp_path, monkeypatch):
    """A run that dies after some windows resumes into a second shard; a rerun of a finished run is a no-op;
    the files are identical to the uninterrupted run's (finalize reading the shards in small windows)."""
    full, _ = run
    real = predict_mod._MakePredictBlock.__call__

    def dies_at_window_3(self, index, number, rows):
        if number == 3:
            raise RuntimeError("simulated crash")
        return real(self, index, number, rows)

    monkeypatch.setattr(predict_mod._MakePredictBlock, "__call__", dies_at_window_3)
    cfg = config(data, tmp_path, num_workers=0, keep_shards=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        predict(cfg)
    monkeypatch.setattr(predict_mod._MakePredictBlock, "__call__", real)
    first = scan_shards(tmp_path / "shards", len(data["reads"]))
    assert first.committed == [21]  # windows 0-2 of 7 reads were committed
    monkeypatch.setattr(predict_mod, "FINALIZE_WINDOW", 4)
    predict(cfg)
    rep = json.loads((tmp_path / "run_report.json").read_text())
    assert rep["summary"]["resumed_records"] == 21
    assert len(list((tmp_path / "shards").glob("shard-*.h5"))) == 2
    for name in RESULT_FILES:
        assert (tmp_path / name).read_bytes().splitlines()[0] == (full / name).read_bytes().splitlines()[0]
    _assert_same_results(tmp_path, full)
    before = {n: (tmp_path / n).read_bytes() for n in RESULT_FILES}
    assert predict(cfg).already_complete  # everything done: nothing loaded, nothing computed, same files
    assert {n: (tmp_path / n).read_bytes() for n in RESULT_FILES} == before


def _assert_same_results(a: Path, b: Path) -> None:
    ra, rb = list(read_predictions(a / "prediction_results.txt")), list(read_predictions(b / "prediction_results.txt"))
    assert [r.seq_id for r in ra] == [r.seq_id for r in rb]
    np.testing.assert_allclose([[r.score1, r.score2] for r in ra], [[r.score1, r.score2] for r in rb], atol=1e-5)
    assert read_consensus(a / "prediction_results_highestscore.csv") == \
        read_consensus(b / "prediction_results_highestscore.csv")
    sa = [ln.split("\t") for ln in (a / "read_summary.tsv").read_text().splitlines()]
    sb = [ln.split("\t") for ln in (b / "read_summary.tsv").read_text().splitlines()]
    assert [x[:3] + x[4:] for x in sa] == [x[:3] + x[4:] for x in sb]


def _cli(data, fasta, out, *extra):
    m = data["models"]
    return ["--classifier", str(m["classifier"]), "--esm-model", str(m["esm"]), "--dnabert-model", str(m["dnabert"]),
            str(fasta), "-o", str(out), "--num-workers", "0", "--device", "cpu", *extra]


def test_cli_other_chunk_size_refused_and_classifier_hint_warns(data, tmp_path, capsys):
    fasta = write_fasta_wrapped(tmp_path / "few.fa", data["reads"][:6])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        run_entrypoint(predict_mod.main, _cli(data, fasta, out, "--chunk-size", "300"))
    assert e.value.code == 0
    assert "classifier" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        run_entrypoint(predict_mod.main, _cli(data, fasta, out, "--chunk-size", "500"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    [line] = [ln for ln in err.splitlines() if "error" in ln]
    assert line.startswith("virnucdist: error:") and "chunk_size" in line and "--overwrite" in line
    with pytest.raises(SystemExit) as e:
        run_entrypoint(predict_mod.main, _cli(data, fasta, out, "--chunk-size", "500", "--overwrite"))
    err = capsys.readouterr().err
    assert e.value.code == 0
    warn = [ln for ln in err.splitlines() if "300_model.pth" in ln]
    assert len(warn) == 1 and "300" in warn[0] and "500" in warn[0]
    assert json.loads((out / "run.json").read_text())["chunk_size"] == 500
    frames = list(translate_records(chunk_records(data["reads"][:6], 500)))
    assert [r.seq_id for r in read_predictions(out / "prediction_results.txt")] == [f.id for f in frames]


def test_no_kept_frame_gives_empty_results(data, tmp_path):
    seg = "TAATAATAA"
    stops = seg + "A" + seg + "A" + seg + "TTATTATTA" + "A" + "TTATTATTA" + "A" + "TTATTATTA"  # a stop in all 6 frames
    reads = [("stops", stops * 3), ("none", ""), ("ns", "N" * 400), ("tiny", "AC")]
    assert not list(translate_records(chunk_records(reads, 300)))
    fasta = write_fasta_wrapped(tmp_path / "r.fa", reads)
    predict(config(data, tmp_path / "out", inputs=(str(fasta),), keep_intermediate=True, num_workers=0))
    out = tmp_path / "out"
    assert (out / "prediction_results.txt").read_text() == "Sequence_ID\tPrediction\tscore1\tscore2\n"
    assert (out / "prediction_results_highestscore.csv").read_text() == "Modified_ID\tIs_Virus\n"
    table = [ln.split("\t") for ln in (out / "read_summary.tsv").read_text().splitlines()[1:]]
    assert [(t[0], t[4]) for t in table] == [("stops", "no_frame"), ("none", "empty"), ("ns", "no_frame"),
                                            ("tiny", "no_frame")]
    with h5py.File(out / "protein_embeddings.h5", "r") as f:
        assert f["embeddings"].shape == (0, 2560)


def test_duplicate_read_ids_are_a_clear_error(data, tmp_path):
    fasta = write_fasta_wrapped(tmp_path / "dup.fa", [("a", "ACGT" * 50), ("b", "ACGT"), ("a", "GGG")])
    with pytest.raises(FastaError, match="duplicate sequence id 'a'"):
        predict(config(data, tmp_path / "out", inputs=(str(fasta),)))


def test_bad_chunk_size_and_wrong_model_width(data, tmp_path):
    with pytest.raises(UserError, match="at least 3 bases"):
        predict(config(data, tmp_path / "o1", chunk_size=2))
    fasta = write_fasta_wrapped(tmp_path / "r.fa", data["reads"][:3])
    small = random_esm2(ESM2Config.from_name("esm2_t6_8M_UR50D"), 0, torch.device("cpu"), torch.float32)
    esm_320 = save_fair_esm_checkpoint(small, tmp_path / "esm2_t6_8M_UR50D.pt")
    with pytest.raises(UserError, match="3328 values per frame = DNABERT-S 768 \\+ ESM-2 width 2560 "
                                        "\\(esm2_t36_3B_UR50D\\).*768 \\+ 320 = 1088: ESM-2 width 320 \\(esm2_t6_8M"):
        predict(config(data, tmp_path / "o2", inputs=(str(fasta),), esm_model=str(esm_320), num_workers=0))


# ----------------------------------------------------------------------------- pieces, no models


def test_pack_pairs_budgets_and_pairing():
    rng = np.random.default_rng(1)
    prot = [np.arange(int(n)) for n in rng.integers(3, 120, 50)] + [np.arange(500)]
    nuc = [np.arange(int(n)) for n in rng.integers(3, 90, 51)]
    batches = pack_pairs(prot, nuc, 300, 200)
    rows = np.concatenate([b.protein.rows.numpy() for b in batches])
    assert rows.tolist() == list(range(51))  # every frame once, in order
    for b in batches:
        assert torch.equal(b.protein.rows, b.nucleotide.rows)
        assert b.protein.num_tokens == sum(len(prot[i]) for i in b.protein.rows.tolist())
        assert b.nucleotide.num_tokens == sum(len(nuc[i]) for i in b.nucleotide.rows.tolist())
        if b.protein.num_seqs > 1:
            assert b.protein.num_tokens <= 300 and b.nucleotide.num_tokens <= 200
    assert any(b.protein.num_tokens == 500 and b.protein.num_seqs == 1 for b in batches)
    assert pack_pairs([], [], 10, 10) == []


# ----------------------------------------------------------------------------- reads as they come, dedup


def test_fp32_labels_equal_the_one_frame_at_a_time_reference_exactly(run, data):
    out, _ = run
    rows = list(read_predictions(out / "prediction_results.txt"))
    want = ["virus" if f["score2"] > f["score1"] else "others" for f in data["ref"]]
    assert [r.prediction for r in rows] == want


def test_fastq_and_rna_reads_give_the_fasta_results(data, tmp_path):
    reads = [r for r in data["reads"][:24] if r[1]]
    fq = tmp_path / "reads.fastq.gz"
    with gzip.open(fq, "wt") as fh:  # FASTQ, gzipped; some reads as RNA (U for T)
        fh.write("".join(f"@{i}\n{s.replace('T', 'U').replace('t', 'u') if k % 3 == 0 else s}\n+\n{'#' * len(s)}\n"
                         for k, (i, s) in enumerate(reads)))
    fa = write_fasta_wrapped(tmp_path / "reads.fa", reads)
    predict(config(data, tmp_path / "fa", inputs=(str(fa),), num_workers=0))
    predict(config(data, tmp_path / "fq", inputs=(str(fq),), num_workers=0))
    _assert_same_results(tmp_path / "fa", tmp_path / "fq")
    assert len(list(read_predictions(tmp_path / "fq" / "prediction_results.txt"))) > 5


def test_dedup_gives_the_files_of_a_run_without_it(data, tmp_path):
    reads = [r for r in data["reads"][:30] if r[1]]
    dup = reads + [(f"copy_{i}", s.upper()) for i, (_, s) in enumerate(reads[::2])]  # same reads, other ids
    fa = write_fasta_wrapped(tmp_path / "dup.fa", dup)
    on = predict(config(data, tmp_path / "on", inputs=(str(fa),), num_workers=0))
    predict(config(data, tmp_path / "off", inputs=(str(fa),), num_workers=0, dedup=False))
    _assert_same_results(tmp_path / "on", tmp_path / "off")
    assert on.report["dedup"]["served_from_duplicate"] == len(reads[::2])
    rows = {r.seq_id: (r.score1, r.score2) for r in read_predictions(tmp_path / "on" / "prediction_results.txt")}
    for i, (rid, _) in enumerate(reads[::2]):  # a copy's frames carry its original's scores, bit for bit
        mine = {k.replace(f"copy_{i}_", ""): v for k, v in rows.items() if k.startswith(f"copy_{i}_chunk")}
        theirs = {k.replace(f"{rid}_", ""): v for k, v in rows.items() if k.startswith(f"{rid}_chunk")}
        assert mine == theirs
