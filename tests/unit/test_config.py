"""One resolved configuration: defaults become what runs, the manifest records it, a resume must match it."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

import virnucdist.models.fp8 as fp8
from virnucdist import EmbedConfig, PredictConfig
from virnucdist.data.fasta import write_fasta
from virnucdist.engine.config import RunConfig, resolve
from virnucdist.errors import UserError
from virnucdist.tasks.embed import build_parser, main
from _helpers import AA, MODEL


@pytest.fixture
def proteins(tmp_path):
    rng = np.random.default_rng(0)
    fa = tmp_path / "p.fa"
    write_fasta(fa, [(f"p{i}", "".join(rng.choice(AA, size=int(rng.integers(5, 40))))) for i in range(10)])
    return fa


def _argv(fa, out, *extra):
    return [str(fa), "--model", MODEL, "--random-init", "-o", str(out), "--device", "cpu", "--num-workers", "0",
            "--quiet", *extra]


def test_resolve_turns_defaults_into_what_runs_on_the_device(monkeypatch):
    monkeypatch.delenv("VIRNUCDIST_FP8_FAST_ACCUM", raising=False)
    cfg = EmbedConfig(inputs=("a.fa",), output_dir="o", model=MODEL)
    cpu = resolve(cfg, torch.device("cpu"))
    assert type(cpu) is EmbedConfig and cpu.model == MODEL
    assert (cpu.device, cpu.dtype, cpu.toks_per_batch, cpu.flush_every) == ("cpu", "fp32", 4096, 1)
    assert cpu.fp8_fast_accum is False and cpu.fp8_policy is None and cpu.num_workers >= 0
    assert resolve(cpu, "cpu") == cpu  # resolving what was resolved changes nothing
    given = resolve(EmbedConfig(inputs=("a.fa",), output_dir="o", model=MODEL, toks_per_batch=300, flush_every=8,
                                fp8_fast_accum=True), "cpu")
    assert (given.toks_per_batch, given.flush_every) == (300, 8)
    assert given.fp8_fast_accum is False  # fast accumulation exists only in the FP8 GEMMs
    with pytest.raises(fp8.FP8UnsupportedError, match="--dtype fp8 needs a GPU"):
        resolve(EmbedConfig(inputs=("a.fa",), output_dir="o", model=MODEL, dtype="fp8"), "cpu")


def test_shared_fields_are_defined_once_for_every_task():
    shared = set(RunConfig.__dataclass_fields__)
    for cls in (EmbedConfig, PredictConfig):
        assert issubclass(cls, RunConfig) and shared <= set(cls.__dataclass_fields__)
    args = build_parser().parse_args(["a.fa", "--model", MODEL, "-o", "o"])
    assert shared <= set(vars(args))  # every shared field has its flag


def test_default_then_explicit_fp32_continues_and_bf16_is_refused(proteins, tmp_path):
    out = tmp_path / "run"
    assert main(_argv(proteins, out)) == 0
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["dtype"] == "fp32" and manifest["fp8_fast_accum"] is False  # what ran, not "default"
    assert manifest["fp8_policy"] is None
    assert manifest["resolved"]["toks_per_batch"] == 4096 and manifest["resolved"]["device"] == "cpu"
    with h5py.File(out / "embeddings.h5", "r") as f:
        assert f.attrs["dtype"] == "float32" and not f.attrs["fp8_fast_accum"]
    before = (out / "embeddings.h5").read_bytes()
    assert main(_argv(proteins, out, "--dtype", "fp32")) == 0  # the same values, given explicitly: accepted
    assert (out / "embeddings.h5").read_bytes() == before
    with pytest.raises(UserError, match=r"different dtype \(fp32 -> bf16\); .*--overwrite") as e:
        main(_argv(proteins, out, "--dtype", "bf16"))
    assert "\n" not in str(e.value)
    assert (out / "embeddings.h5").read_bytes() == before


def test_a_numerics_switch_changed_between_runs_is_refused(proteins, tmp_path, monkeypatch):
    # FP8 runs here through its fp32 emulation of the scaled GEMM; only the GPU check is told yes
    monkeypatch.setattr(fp8, "fp8_supported", lambda device: True)
    monkeypatch.delenv("VIRNUCDIST_FP8_FAST_ACCUM", raising=False)
    out = tmp_path / "run"
    assert main(_argv(proteins, out, "--dtype", "fp8", "--toks-per-batch", "256")) == 0
    with h5py.File(out / "embeddings.h5", "r") as f:
        assert f.attrs["dtype"] == "fp8" and f.attrs["fp8_fast_accum"]  # the default policy accumulates fast
        assert f.attrs["fp8_policy"] == "gemms=qkv+out+fc1+fc2;first=4;last=0;bc=1;fast=1"  # the default, written out
    with pytest.raises(UserError, match=r"different fp8_policy \(gemms=qkv\+out\+fc1\+fc2;first=4;last=0;bc=1;fast=1 "
                                        r"-> gemms=qkv\+out\+fc1\+fc2;first=2;last=2;bc=1;fast=1\)"):
        main(_argv(proteins, out, "--dtype", "fp8", "--fp8-policy", "edges2-bc", "--fp8-fast-accum"))
    with pytest.raises(UserError, match=r"different fp8_fast_accum \(True -> False\), fp8_policy \(.*fast=1 -> "
                                        r".*fast=0\)"):
        main(_argv(proteins, out, "--dtype", "fp8", "--fp8-policy", "first4-bc"))  # no fast accumulation
    monkeypatch.setenv("VIRNUCDIST_FP8_FAST_ACCUM", "1")  # the environment switch is the same field:
    assert main(_argv(proteins, out, "--dtype", "fp8", "--fp8-policy", "first4-bc")) == 0  # same values: accepted
    monkeypatch.setenv("VIRNUCDIST_FP8_FAST_ACCUM", "0")
    with pytest.raises(UserError, match=r"different fp8_fast_accum \(True -> False\)"):
        main(_argv(proteins, out, "--dtype", "fp8", "--fp8-policy", "first4-bc"))
    assert main(_argv(proteins, out, "--dtype", "fp8", "--fp8-policy", "first4-bc", "--overwrite")) == 0
    assert json.loads((out / "run.json").read_text())["fp8_fast_accum"] is False
