"""``virnucdist train``: the demo learns, the file is VirNucPro's pickled module and runs in predict,
a killed run resumes to the same classifier, and the pieces (windows, split, metrics) are right."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_data import genomes, tiny_models, two_sources

from virnucdist.data.fasta import write_fasta
from virnucdist.errors import UserError
from virnucdist.models.classifier import classifier_chunk_size_hint, load_classifier
from virnucdist.tasks.predict import PredictConfig, predict
from virnucdist.tasks.train import TrainConfig, train
from virnucdist.vnp.chunk import window_spans
from virnucdist.vnp.consensus import read_predictions
from virnucdist.vnp.training import binary_metrics, split_groups
from _formats import VIRNUCPRO_MLP_SOURCE
from _helpers import clean_env

WINDOW_RECORDS = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread here and in the subprocesses: reproducible fp32 sums (and no spinning on a shared box)."""
    n = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(n)


def _cfg(d: Path, out: Path, **kw) -> TrainConfig:
    base = dict(viral=(str(d / "viral.fa"),), other=(str(d / "other.fa"),), esm_model=str(d / "esm2_tiny.pt"),
                dnabert_model=str(d / "dnabert_tiny"), output_dir=str(out), chunk_size=90, num_workers=0,
                device="cpu", window_records=WINDOW_RECORDS, quiet=True)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    two_sources(d)
    tiny_models(d)
    res = train(_cfg(d, d / "ref"))
    return d, d / "ref", res


def _state(path: Path) -> dict:
    return load_classifier(path).state_dict()


def test_demo_beats_chance_clearly(demo):
    """Two codon usages, tiny random models, CPU: the held-out AUROC is at least 0.9."""
    d, out, res = demo
    m = json.loads((out / "metrics.json").read_text())
    assert m["auroc"] >= 0.9, m
    assert set(m) >= {"accuracy", "precision", "recall", "f1", "auroc", "confusion_matrix"}
    (tn, fp), (fn, tp) = m["confusion_matrix"]
    assert tn + fp + fn + tp == m["held_out_rows"] > 20
    assert (m["held_out_viral_frames"], m["held_out_other_frames"]) == (fn + tp, tn + fp)
    assert m["accuracy"] == pytest.approx((tp + tn) / m["held_out_rows"])
    assert m["input_dim"] == 128 + 64 and m["viral_frames"] > 0 and m["other_frames"] > 0
    assert 0 < m["per_chunk"]["chunks"] <= m["held_out_rows"] and m["per_chunk"]["auroc"] >= 0.9, m["per_chunk"]
    log = (out / "training_log.tsv").read_text().splitlines()
    assert log[0].split("\t") == ["epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]
    assert len(log) - 1 == m["epochs_run"] >= m["best_epoch"] >= 1
    assert not (out / "shards").exists()  # removed once training is done
    from virnucdist.inspection import describe, format_description

    desc = describe(out)
    assert desc["state"] == "finished" and desc["train_outputs"]["auroc"] == m["auroc"]
    assert "predict with --chunk-size 90" in format_description(desc)


def test_classifier_is_virnucpro_pickled_module(demo):
    """classifier.pth is ``torch.save(model)`` of ``__main__.MLPClassifier``: loaded the way VirNucPro's
    prediction.py does (its own class in __main__, a full unpickle) it gives our logits."""
    d, out, _ = demo
    x = torch.randn(5, 192, generator=torch.Generator().manual_seed(0))
    torch.save(x, d / "probe.pt")
    script = VIRNUCPRO_MLP_SOURCE + r'''
import sys, torch
model = torch.load(sys.argv[1], weights_only=False)
assert type(model).__name__ == "MLPClassifier" and type(model).__module__ == "__main__"
model.eval()
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2])), sys.argv[3])
'''
    subprocess.run([sys.executable, "-c", script, str(out / "classifier.pth"), str(d / "probe.pt"),
                    str(d / "logits.pt")], check=True, timeout=120)
    with torch.no_grad():
        ours = load_classifier(out / "classifier.pth", expected_input_dim=(128, 64))(x)
    torch.testing.assert_close(torch.load(d / "logits.pt"), ours, rtol=0, atol=0)


def test_trained_classifier_runs_in_predict(demo, tmp_path):
    """predict with the trained file, the same models and chunk size: fresh genomes of each source are
    mostly called right."""
    d, out, _ = demo
    reads = genomes(6, 270, 0.6, "newvir", 7) + genomes(6, 270, -0.6, "newoth", 8)
    fasta = tmp_path / "reads.fa"
    write_fasta(fasta, reads)
    predict(PredictConfig(inputs=(str(fasta),), chunk_size=90, classifier=str(out / "classifier.pth"),
                          esm_model=str(d / "esm2_tiny.pt"), dnabert_model=str(d / "dnabert_tiny"),
                          output_dir=str(tmp_path / "pred"), num_workers=0, device="cpu", quiet=True))
    assert classifier_chunk_size_hint(out / "classifier.pth") == 90  # from metrics.json: predict warns on another
    rows = list(read_predictions(tmp_path / "pred" / "prediction_results.txt"))
    assert rows
    right = [(r.prediction == "virus") == r.seq_id.startswith("newvir") for r in rows]
    assert np.mean(right) >= 0.75, np.mean(right)


@pytest.mark.parametrize("point", ["batch:2", "epoch:2"], ids=["embedding", "training"])
def test_killed_train_resumes_to_the_same_classifier(demo, tmp_path, point):
    """kill -9 mid-embedding (after 2 committed windows) or mid-training; the same command again gives
    the classifier of an uninterrupted run, bit for bit."""
    d, ref, _ = demo
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "virnucdist.train", "--viral", str(d / "viral.fa"), "--other", str(d / "other.fa"),
           "--chunk-size", "90", "--esm-model", str(d / "esm2_tiny.pt"), "--dnabert-model", str(d / "dnabert_tiny"),
           "-o", str(out), "--num-workers", "0", "--device", "cpu", "--window-records", str(WINDOW_RECORDS), "--quiet"]
    p = subprocess.run(cmd, env=clean_env(VIRNUCDIST_TEST_KILL_AT=point), capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert not (out / "classifier.pth").exists() and (out / "shards").is_dir()
    train(_cfg(d, out))
    a, b = _state(ref / "classifier.pth"), _state(out / "classifier.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "metrics.json").read_text())["auroc"] == json.loads((ref / "metrics.json").read_text())["auroc"]


def test_windows_and_bad_settings(demo, tmp_path):
    assert window_spans(0, 150, 50) == []
    assert window_spans(100, 150, 50) == [(0, 100)]
    assert window_spans(300, 150, 50) == [(0, 150), (50, 200), (100, 250), (150, 300)]
    assert window_spans(320, 150, 100) == [(0, 150), (100, 250), (170, 320)]  # the tail gets a last window
    d, _, _ = demo
    with pytest.raises(UserError, match="one of --chunk-size"):
        train(_cfg(d, tmp_path / "a", window=150))
    with pytest.raises(UserError, match="both --viral and --other"):
        train(_cfg(d, tmp_path / "b", other=(str(d / "viral.fa"),)))
    with pytest.raises(UserError, match="--val-fraction"):
        train(_cfg(d, tmp_path / "c", val_fraction=1.5))


def test_sliding_windows_train(demo, tmp_path):
    """--window/--step: more, overlapping pieces than chunking; the run trains and records them."""
    d, ref, _ = demo
    train(_cfg(d, tmp_path / "w", chunk_size=None, window=90, step=45, max_epochs=3))
    m = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert m["pieces"] == {"chunk_size": None, "window": 90, "step": 45} and m["epochs_run"] <= 3
    assert m["frames"] > json.loads((ref / "metrics.json").read_text())["frames"]


def test_split_and_metrics():
    groups = np.repeat(np.arange(50), 3)
    held = split_groups(groups, 0.1, 42)
    assert held.sum() == 15 and all(held[groups == g].all() or not held[groups == g].any() for g in range(50))
    assert np.array_equal(held, split_groups(groups, 0.1, 42)) and not np.array_equal(held, split_groups(groups, 0.1, 1))
    m = binary_metrics(np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.6, 0.4, 0.8, 0.9]))
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["auroc"] == pytest.approx(5 / 6)  # pairs (pos > neg): 0.4>0.1, 0.8, 0.9 beat both -> 5 of 6


def test_report_draws_the_learning_curves(demo):
    pytest.importorskip("matplotlib")
    from virnucdist.cli import main

    _, out, _ = demo
    assert main(["report", str(out), "--png"]) == 0
    page = (out / "report.html").read_text()
    assert "id='fig-learning'" in page and "Learning curves" in page
    assert (out / "report-learning.png").stat().st_size > 1000


def test_annotated_frames_one_per_chunk(demo, tmp_path):
    """--frames annotated on coding sequences: exactly one frame per chunk (the CDS's own, stop-free), where
    all stop-free frames are more; chunks of 100 start on all three codon phases."""
    from virnucdist.data.index import read_fasta
    from virnucdist.vnp.chunk import chunk_spans
    from virnucdist.vnp.translate import six_frame

    d, _, _ = demo
    train(_cfg(d, tmp_path / "a", chunk_size=100, frames="annotated", max_epochs=2))
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    seqs = [r.seq for f in ("viral.fa", "other.fa") for r in read_fasta(d / f)]
    spans = [(s, a, b) for s in seqs for a, b in chunk_spans(len(s), 100)]
    assert {a % 3 for _, a, _ in spans} == {0, 1, 2}
    assert m["frames"] == len(spans) and m["frames"] < sum(len(six_frame("", s[a:b])) for s, a, b in spans)
    assert m["frame_rule"] == "annotated"


def test_console_script_train_is_the_task(demo, capsys):
    """``virnucdist train ...`` runs the train task's parser and its one-line errors (exit 2)."""
    from virnucdist.cli import main as cli_main

    d, _, _ = demo
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--viral", str(d / "viral.fa"), "--other", str(d / "viral.fa"), "--chunk-size", "90",
                  "--esm-model", str(d / "esm2_tiny.pt"), "--dnabert-model", str(d / "dnabert_tiny"), "-o",
                  str(d / "cli_out")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("virnucdist: error:") and "given as both --viral and --other" in err[-1]


def test_chunk_metrics_use_virnucpro_consensus():
    from virnucdist.vnp.training import chunk_metrics

    # chunk 7 (virus): frames 0.3 / 0.6 -> max P(virus) 0.6 < max P(others) 0.7 -> others (VirNucPro's rule)
    # chunk 9 (others): one frame 0.2 -> others; chunk 8 (virus): 0.9 -> virus
    m = chunk_metrics(np.array([1, 1, 0, 1]), np.array([0.3, 0.6, 0.2, 0.9]), np.array([7, 7, 9, 8]))
    assert m["chunks"] == 3 and m["confusion_matrix"] == [[1, 0], [1, 1]]


def test_balance_classes(demo, tmp_path):
    from virnucdist.vnp.training import balance_mask

    y = np.r_[np.ones(30, bool), np.zeros(9, bool)]
    groups = np.r_[np.repeat(np.arange(10), 3), np.repeat(np.arange(10, 13), 3)]
    keep = balance_mask(y, groups, 42)
    assert keep[~y].all() and 9 <= keep[y].sum() <= 12 and keep[y].sum() % 3 == 0  # whole groups of the larger
    d, ref, _ = demo
    before = json.loads((ref / "metrics.json").read_text())
    assert before["viral_frames"] != before["other_frames"]
    train(_cfg(d, tmp_path / "b", balance_classes=True, max_epochs=1))
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    small = min(before["viral_frames"], before["other_frames"])
    assert min(m["viral_frames"], m["other_frames"]) == small and small <= max(m["viral_frames"], m["other_frames"]) <= small + 6


def test_time_limit_stops_training_keeping_the_best_epoch():
    from virnucdist.vnp.training import Recipe, train_classifier

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 8, generator=g), torch.randint(0, 2, (200,), generator=g)
    held = np.arange(200) % 10 == 0
    _, log, m = train_classifier(x, y, held, Recipe(max_epochs=50, patience=50), time_limit_s=0.0)
    assert len(log) == 1 and m["stopped_by"] == "time_limit" and m["best_epoch"] == 1
    _, log, m = train_classifier(x, y, held, Recipe(max_epochs=3, patience=50))
    assert len(log) == 3 and m["stopped_by"] == "max_epochs"


def test_settings_and_models_refused_before_any_work(demo, tmp_path):
    """One line before any indexing: a recipe value torch would crash on after the embedding, a file given
    to both classes under two spellings, a DNABERT-S directory as --esm-model (not a width problem)."""
    d, _, _ = demo
    from virnucdist.tasks.predict import PredictTask
    from virnucdist.tasks.train import TrainTask

    with pytest.raises(UserError, match=r"--momentum -1.0 \(>= 0\)"):
        TrainTask(_cfg(d, tmp_path / "m", momentum=-1.0))
    with pytest.raises(UserError, match=r"--gamma 0.0 \(> 0\)"):
        TrainTask(_cfg(d, tmp_path / "g", gamma=0.0))
    with pytest.raises(UserError, match=r"--max-train-minutes -1.0"):
        TrainTask(_cfg(d, tmp_path / "t", max_train_minutes=-1.0))
    other = d / "sub" / ".." / "viral.fa"
    (d / "sub").mkdir(exist_ok=True)
    with pytest.raises(UserError, match="given as both --viral and --other"):
        TrainTask(_cfg(d, tmp_path / "b", other=(str(other),)))
    with pytest.raises(UserError, match="--esm-model .*dnabert_tiny is DNABERT-S"):
        TrainTask(_cfg(d, tmp_path / "s", esm_model=str(d / "dnabert_tiny")))
    clf = d / "ref" / "classifier.pth"  # 192 wide: DNABERT-S-tiny 128 + the tiny ESM-2's 64
    with pytest.raises(UserError, match="--esm-model .*dnabert_tiny is DNABERT-S") as e:
        PredictTask(PredictConfig(inputs=(str(d / "viral.fa"),), chunk_size=90, esm_model=str(d / "dnabert_tiny"),
                                  dnabert_model=str(d / "dnabert_tiny"), classifier=str(clf),
                                  output_dir=str(tmp_path / "p")))
    assert "values per frame" not in str(e.value)  # not reported as a classifier width mismatch
    assert not (tmp_path / "p").exists() and not (tmp_path / "s").exists()
    for missing in (str(tmp_path / "nope" / "DNABERT-S"), "someone/not-cached-here"):  # was an 'ESM-2 checkpoint' line
        with pytest.raises(UserError, match=r"--dnabert-model .*: no DNABERT-S model there") as e:
            PredictTask(PredictConfig(inputs=(str(d / "viral.fa"),), chunk_size=90, esm_model="esm2_t6_8M_UR50D",
                                      dnabert_model=missing, classifier=str(clf), output_dir=str(tmp_path / "p")))
        assert "ESM-2" not in str(e.value)


def test_classes_whose_ids_coincide_are_neither_paired_nor_duplicates(demo, tmp_path):
    """Viral and other files named alike (seq0, seq1 ... in both, e.g. simulated reads) are two classes:
    never taken for the R1/R2 files of a pair (refused as a 'cut short' pair before), ids may repeat."""
    d, ref, _ = demo
    viral = [(f"seq{i}", s) for i, (_, s) in enumerate(genomes(6, 300, 0.6, "v", 5))]
    other = [(f"seq{i}", s) for i, (_, s) in enumerate(genomes(4, 300, -0.6, "o", 6))]
    write_fasta(tmp_path / "v.fa", viral)
    write_fasta(tmp_path / "o.fa", other)
    train(_cfg(d, tmp_path / "run", viral=(str(tmp_path / "v.fa"),), other=(str(tmp_path / "o.fa"),), max_epochs=1))
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    write_fasta(tmp_path / "o2.fa", [(f"oth{i}", s) for i, (_, s) in enumerate(other)])
    train(_cfg(d, tmp_path / "ref2", viral=(str(tmp_path / "v.fa"),), other=(str(tmp_path / "o2.fa"),), max_epochs=1))
    m2 = json.loads((tmp_path / "ref2" / "metrics.json").read_text())
    assert (m["viral_frames"], m["other_frames"]) == (m2["viral_frames"], m2["other_frames"]) and m["other_frames"] > 0


def test_a_held_out_set_without_one_class_is_said(demo, tmp_path, capsys):
    """One held-out chunk (a tiny --val-fraction): one class only, so precision/recall/AUROC mean nothing;
    a warning says so and metrics.json counts the held-out frames per class."""
    d, _, _ = demo
    capsys.readouterr()
    train(_cfg(d, tmp_path / "v", val_fraction=0.001, max_epochs=1))
    err = capsys.readouterr().err
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert 0 in (m["held_out_viral_frames"], m["held_out_other_frames"]) and m["auroc"] is None
    missing = "viral" if m["held_out_viral_frames"] == 0 else "other"
    assert f"holds no {missing} frames" in err and "--val-fraction" in err
