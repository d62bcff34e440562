"""ESM-2 from a fair-esm .pt straight into the run's dtype: exact tensors, and no full fp32 copy in host
memory when a half dtype is asked for (the checkpoint is memory-mapped; only the cast tensors are anonymous)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from virnucdist.models.esm2 import ESM2Config
from virnucdist.models.loading import load_model
from virnucdist.models.random_init import random_esm2
from _formats import save_fair_esm_checkpoint


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    model = random_esm2(ESM2Config(3, 64, 4), seed=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # LayerNorm ones/zeros would hide a swapped tensor
    path = save_fair_esm_checkpoint(model, tmp_path_factory.mktemp("fastload") / "esm2_tiny.pt")
    return path, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_loaded_tensors_are_the_checkpoint_cast_once(tiny_ckpt, dtype):
    path, ref = tiny_ckpt
    lm = load_model(str(path), dtype=dtype)
    got = lm.module.state_dict()
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert got[k].dtype == dtype and got[k].device.type == "cpu", k
        assert torch.equal(got[k], v.to(dtype)), k  # fused qkv included: cast per tensor = cast of the whole
    assert lm.module.inv_freq.dtype == torch.float32
    assert not any(p.requires_grad for p in lm.module.parameters())


PROBE = r"""
import json, sys, threading, time
peak = [0]
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
def watch():
    while True:
        peak[0] = max(peak[0], anon()); time.sleep(0.002)
import torch
from virnucdist.models.loading import load_model
load_model(sys.argv[2], dtype=torch.bfloat16)  # one-off costs first (lazy imports: meta-device kernels...)
threading.Thread(target=watch, daemon=True).start()
time.sleep(0.05)
base = peak[0] = anon()
lm = load_model(sys.argv[1], dtype=torch.bfloat16)
time.sleep(0.05)
print(json.dumps({"peak": peak[0] - base, "dtypes": sorted({str(p.dtype) for p in lm.module.parameters()})}))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_half_precision_load_builds_no_fp32_copy(tmp_path, tiny_ckpt):
    model = random_esm2(ESM2Config(4, 768, 12), seed=1)  # 28M parameters: 113 MB in fp32
    path = save_fair_esm_checkpoint(model, tmp_path / "esm2_mid.pt")
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    del model
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), str(tiny_ckpt[0])], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["dtypes"] == ["torch.bfloat16"]
    # the bf16 model is half the fp32 bytes; the old path (fp32 q/k/v fused on the host, then a cast of the
    # whole model) peaked at about the fp32 size
    print(f"peak anonymous memory {r['peak'] / 1e6:.0f} MB for a {fp32_bytes / 1e6:.0f} MB fp32 checkpoint")
    assert r["peak"] < 0.7 * fp32_bytes
