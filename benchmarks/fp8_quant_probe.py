"""Where does ESM-2 3B's FP8 quantisation time go? Times the fused kernels on one layer's shapes.

    python benchmarks/fp8_quant_probe.py            (CUDA; 65,536 tokens, 3B widths 2560 / 10240)

Rows: plain bf16 GELU (the bf16 path's kernel), GELU + per-token e4m3 in one kernel (what fc2's
input uses), GELU in bf16 then a separate per-token quantisation, the attention output's
quantisation (2560 wide), and add+LayerNorm with and without quantisation. Each with its achieved
bandwidth (bytes read + written once / time).
"""

from __future__ import annotations

import torch
import triton.testing

from virnucdist.models import fused


def main() -> None:
    dev = torch.device("cuda")
    t, d = 65536, 2560
    x = torch.randn(t, 4 * d, device=dev, dtype=torch.bfloat16)
    bias = torch.randn(4 * d, device=dev, dtype=torch.bfloat16)
    a = torch.randn(t, d, device=dev, dtype=torch.bfloat16)
    r = torch.randn(t, d, device=dev, dtype=torch.bfloat16)
    w = torch.ones(d, device=dev, dtype=torch.bfloat16)
    b = torch.zeros(d, device=dev, dtype=torch.bfloat16)
    rows = [
        ("gelu bf16 [T, 10240]", lambda: fused.gelu(x, bias), x.numel() * 4),
        ("gelu + e4m3 one kernel", lambda: fused.gelu(x, bias, quant=True), x.numel() * 3),
        ("gelu bf16, then quant_rows", lambda: fused.quant_rows(fused.gelu(x, bias)), x.numel() * 7),
        ("quant_rows [T, 2560]", lambda: fused.quant_rows(a), a.numel() * 3),
        ("add+LN bf16 [T, 2560]", lambda: fused.add_layer_norm(a, r, w, b, 1e-5), a.numel() * 8),
        ("add+LN + e4m3", lambda: fused.add_layer_norm(a, r, w, b, 1e-5, quant=True), a.numel() * 7),
    ]
    _, _, _, qkern = fused._lib()
    y = torch.empty(t, 4 * d, device=dev, dtype=fused.FP8_DTYPE)
    sc = torch.empty(t, device=dev, dtype=torch.float32)

    def variant(block, block2, one, warps):
        return lambda: qkern[(t,)](x, bias, y, sc, 4 * d, x.stride(0), HAS_BIAS=True, GELU=True, BLOCK=block,
                                   ONE_PASS=one, EMULATE=False, BLOCK2=block2, num_warps=warps)

    # (16384, 0): one masked block (37.5% of its lanes computed for nothing); (8192, 2048): two exact blocks
    for block, block2, one in ((16384, 0, True), (8192, 2048, True), (4096, 0, False), (2048, 0, False)):
        for warps in (4, 8, 16, 32):
            if warps * 32 > block:
                continue
            rows.append((f"gelu+e4m3 block {block}{'+%d' % block2 if block2 else ''} "
                         f"{'1-pass' if one else '2-pass'} w{warps}", variant(block, block2, one, warps), x.numel() * 3))
    print(f"{torch.cuda.get_device_name()}: {t} tokens")
    for name, fn, nbytes in rows:
        ms = triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")
        print(f"  {name:<36} {ms:8.3f} ms  {nbytes / ms / 1e6:7.0f} GB/s")


if __name__ == "__main__":
    main()
