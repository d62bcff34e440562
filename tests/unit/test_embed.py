"""The embed entrypoint in process (world of one, no process group) and its CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from virnucdist import EmbedConfig, embed
from virnucdist.errors import UserError
from virnucdist.data.fasta import write_fasta
from virnucdist.models.loading import load_model
from virnucdist.packing import pack_token_arrays
from virnucdist.writers import read_embeddings
from _helpers import AA, MODEL

EMPTY = ("empty_a", "empty_b")


def _records(n=60, seed=0, max_len=190):
    rng = np.random.default_rng(seed)
    recs = [(f"prot{i}", "".join(rng.choice(AA, size=int(rng.integers(1, max_len))))) for i in range(n)]
    recs.insert(10, (EMPTY[0], ""))
    recs.append((EMPTY[1], ""))
    return recs


@pytest.fixture(scope="module")
def fasta(tmp_path_factory):
    path = tmp_path_factory.mktemp("embed_in") / "prot.fa"
    recs = _records()
    write_fasta(path, recs, width=50)
    return path, recs


def _cfg(inputs, out, **kw) -> EmbedConfig:
    base = dict(inputs=tuple(str(p) for p in inputs), model=MODEL, output_dir=str(out), random_init=True, seed=0,
                device="cpu", num_workers=0, toks_per_batch=1024, quiet=True)
    base.update(kw)
    return EmbedConfig(**base)


@pytest.fixture(scope="module")
def reference(fasta, tmp_path_factory):
    """One complete run that several tests compare against."""
    out = tmp_path_factory.mktemp("embed_ref")
    res = embed(_cfg([fasta[0]], out, flush_every=8))
    ids, emb = read_embeddings(res.output)
    return out, res, ids, emb


def _report(out):
    return json.loads((out / "run_report.json").read_text())


def test_output_matches_direct_model(fasta, reference):
    _, recs = fasta
    out, res, ids, emb = reference
    kept = [(i, s) for i, s in recs if s]
    assert res.output == out / "embeddings.h5"
    assert ids == [i for i, _ in kept]  # input order, empty records left out
    assert emb.shape == (len(kept), 320) and emb.dtype == np.float32
    assert np.isfinite(emb).all()
    m = load_model(MODEL, random_init=True, seed=0)
    batch = pack_token_arrays([m.tokenizer.encode(s) for _, s in kept], list(range(len(kept))))
    with torch.inference_mode():
        direct = m.embed(batch).pooled[0]
    cos = F.cosine_similarity(torch.from_numpy(emb).double(), direct.double(), dim=-1)
    assert cos.min().item() >= 0.9999, cos.min().item()
    assert np.abs(emb - direct.numpy()).max() < 1e-4
    # rows really differ from each other (not one vector broadcast)
    assert np.abs(emb[0] - emb[1]).max() > 1e-3


def test_empty_records_reported(reference):
    out, res, _, _ = reference
    rep = _report(out)
    assert rep["skipped"]["empty"] == list(EMPTY)
    assert rep["skipped"]["empty_count"] == 2
    with h5py.File(out / "embeddings.h5", "r") as f:
        assert json.loads(f.attrs["skipped_empty_ids"]) == list(EMPTY)
        assert f.attrs["model"] == MODEL and f.attrs["pooling"].startswith("mean")
        assert f.attrs["dtype"] == "float32" and int(f.attrs["repr_layer"]) == -1
        assert len(f.attrs["input_fingerprint"]) == 64 and f.attrs["virnucdist_version"]
        assert bool(f.attrs["random_init"])


def test_run_report_summary(fasta, reference):
    out, res, ids, _ = reference
    rep = _report(out)
    assert res.report["summary"] == rep["summary"]
    s = rep["summary"]
    for key in ("world_size", "wall_s", "sequences", "tokens", "tokens_per_s", "token_imbalance", "truncated",
                "oom_splits", "resumed_records"):
        assert key in s, key
    assert s["world_size"] == rep["world_size"] == 1
    assert s["sequences"] == len(ids) and s["resumed_records"] == 0 and s["oom_splits"] == 0
    assert s["tokens"] == sum(len(seq) + 2 for _, seq in fasta[1] if seq)
    r0 = rep["ranks"][0]
    assert r0["toks_per_batch"] == 1024 and r0["batches"] > 1
    assert r0["packing_efficiency"] == pytest.approx(r0["tokens"] / (r0["batches"] * 1024))
    assert {"index", "model_load", "inference", "finalize"} <= set(r0["phases"])
    assert rep["config"]["model"] == MODEL and "versions" in rep
    # start-up: launch -> the first forward, after the index and the model load, before the inference ends
    spans = {sp["name"]: sp for sp in r0["phase_spans"]}
    assert r0["launch_to_run_s"] > 0 and s["start_s"] == r0["start_s"]
    assert r0["launch_to_run_s"] + spans["model_load"]["end"] <= r0["start_s"]
    assert r0["start_s"] <= r0["launch_to_run_s"] + spans["inference"]["end"]


def test_resume_after_partial_run(fasta, reference, tmp_path):
    """A run killed after some flushes: committed rows are kept, the rest redone, same result."""
    out = tmp_path / "run"
    ids, emb = read_embeddings(embed(_cfg([fasta[0]], out, flush_every=8, window_records=8, keep_shards=True)).output)
    (out / "embeddings.h5").unlink()
    run_json = json.loads((out / "run.json").read_text())
    run_json["complete"] = False  # as if killed before finalize
    (out / "run.json").write_text(json.dumps(run_json))
    shards = sorted((out / "shards").glob("shard-*.h5"))
    assert len(shards) == 1
    with h5py.File(shards[0], "a") as f:
        n = int(f.attrs["committed"])
        keep = 24  # as if killed after 3 flushes of 8
        f.attrs["committed"] = keep
    res = embed(_cfg([fasta[0]], out, flush_every=8, window_records=8, keep_shards=True))
    ids2, emb2 = read_embeddings(res.output)
    assert ids2 == ids
    np.testing.assert_array_equal(emb2, emb)  # bit-identical in fp32
    rep = _report(out)
    assert rep["summary"]["resumed_records"] == keep
    assert rep["ranks"][0]["sequences"] == n - keep
    assert len(list((out / "shards").glob("shard-*.h5"))) == 2
    # a third run has nothing left to do
    res3 = embed(_cfg([fasta[0]], out))
    assert res3.already_complete
    np.testing.assert_array_equal(read_embeddings(res3.output)[1], emb)


def test_changed_input_refused_unless_overwrite(fasta, reference, tmp_path):
    out = tmp_path / "run"
    embed(_cfg([fasta[0]], out))
    other = tmp_path / "other.fa"
    recs = _records(n=20, seed=9)
    write_fasta(other, recs)
    with pytest.raises(UserError, match="different input_fingerprint.*--overwrite"):
        embed(_cfg([other], out))
    res = embed(_cfg([other], out, overwrite=True))
    ids, emb = read_embeddings(res.output)
    assert ids == [i for i, s in recs if s] and emb.shape == (len(ids), 320)
    assert _report(out)["summary"]["resumed_records"] == 0  # the old shards were discarded


def test_different_model_refused(fasta, tmp_path):
    out = tmp_path / "run"
    embed(_cfg([fasta[0]], out))
    with pytest.raises(UserError, match="different model"):
        embed(_cfg([fasta[0]], out, seed=1))
    with pytest.raises(UserError, match="different repr_layer"):
        embed(_cfg([fasta[0]], out, repr_layer=2))


def test_shards_of_another_input_refused(fasta, tmp_path):
    """run.json lost but shards left: the shard ids betray another input; a clear UserError."""
    out = tmp_path / "run"
    embed(_cfg([fasta[0]], out, keep_shards=True))
    (out / "run.json").unlink()
    with pytest.raises(UserError, match="holds no run.json"):  # a final file no run of ours made: refused
        embed(_cfg([fasta[0]], out))
    (out / "embeddings.h5").unlink()
    other = tmp_path / "renamed.fa"
    write_fasta(other, [(f"other_{i}", s) for i, s in fasta[1]])
    with pytest.raises(UserError, match="holds records of another input"):
        embed(_cfg([other], out))


def test_repr_layer_out_of_range_is_a_user_error(fasta, tmp_path):
    with pytest.raises(UserError, match="--repr-layer 7 is outside"):
        embed(_cfg([fasta[0]], tmp_path / "run", repr_layer=7))


def test_oom_recovery(fasta, reference, tmp_path, monkeypatch):
    _, _, ids, emb = reference
    monkeypatch.setenv("VIRNUCDIST_TEST_OOM_ABOVE", "200")
    out = tmp_path / "run"
    res = embed(_cfg([fasta[0]], out))
    ids2, emb2 = read_embeddings(res.output)
    assert ids2 == ids
    np.testing.assert_allclose(emb2, emb, rtol=0, atol=1e-5)
    rep = _report(out)
    assert rep["ranks"][0]["oom_splits"] > 0 and rep["summary"]["oom_splits"] == rep["ranks"][0]["oom_splits"]
    assert rep["ranks"][0]["sequences"] == len(ids)


def test_oom_on_single_sequence_is_skipped_counted_and_named(tmp_path, monkeypatch):
    fa = tmp_path / "one.fa"
    write_fasta(fa, [("long", "M" * 300), ("short", "C" * 5), ("also_short", "MKV")])
    monkeypatch.setenv("VIRNUCDIST_TEST_OOM_ABOVE", "200")
    res = embed(_cfg([fa], tmp_path / "run"))
    ids, emb = read_embeddings(res.output)
    assert ids == ["short", "also_short"] and np.isfinite(emb).all()
    rep = _report(tmp_path / "run")
    assert rep["counters"]["oom_skipped"] == 1 and rep["counts"]["bad"]["out of memory"] == ["long"]
    assert rep["test_hooks"] == {"VIRNUCDIST_TEST_OOM_ABOVE": "200"}
    with h5py.File(res.output, "r") as f:
        assert json.loads(f.attrs["skipped_ids"]) == ["long"]


def test_output_dir_not_writable(fasta, tmp_path):
    if os.geteuid() == 0:  # root ignores permission bits: use a path that is an existing file
        target = tmp_path / "a_file"
        target.write_text("x")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "out"
    try:
        with pytest.raises(UserError, match="not writable") as e:
            embed(_cfg([fasta[0]], target))
        assert str(target) in str(e.value) and "-o" in str(e.value)
    finally:
        if os.geteuid() != 0:
            (tmp_path / "ro").chmod(0o700)


def _cli(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "virnucdist.embed", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_bad_fasta_one_line(tmp_path):
    bad = tmp_path / "garbage.fa"
    bad.write_bytes(bytes(range(256)) * 8)
    p = _cli([str(bad), "--model", MODEL, "--random-init", "-o", str(tmp_path / "out"), "--num-workers", "0",
              "--device", "cpu"], tmp_path)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("virnucdist: error:") and str(bad) in lines[0]
    assert "Traceback" not in p.stderr


def test_cli_missing_weights_one_line(fasta, tmp_path):
    p = _cli([str(fasta[0]), "--model", "/nonexistent.pt", "-o", str(tmp_path / "out"), "--num-workers", "0",
              "--device", "cpu", "--quiet"], tmp_path)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("virnucdist: error:") and "/nonexistent.pt" in lines[0]
