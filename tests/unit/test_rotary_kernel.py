"""The CUDA rotary kernel, run through Triton's interpreter on the CPU, equals the PyTorch path."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = r"""
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch
from virnucdist.models import rotary
triton, kern = rotary._kernel()
torch.manual_seed(0)
for T, H, D in [(37, 5, 16), (20, 20, 24), (9, 3, 128), (1, 40, 64)]:
    qkv = torch.randn(T, 3, H, D)
    pos = torch.randint(0, 1100, (T,))
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
    q, k, v = rotary.rotary_qk(qkv.clone(), pos, inv)
    buf = qkv.clone()
    kern[(T,)](buf, pos, inv, buf.stride(0), 2 * H, HALF=D // 2, BLOCK_D=triton.next_power_of_2(D // 2),
               BLOCK_H=triton.next_power_of_2(2 * H))
    err = max((buf[:, 0] - q).abs().max().item(), (buf[:, 1] - k).abs().max().item())
    assert err < 1e-4, (T, H, D, err)
    assert torch.equal(buf[:, 2], v), "v must be untouched"
print("ok")
"""


def test_triton_rotary_matches_torch():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
