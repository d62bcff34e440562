"""Where a packed ESM-2 forward's time goes, against the sustained GEMM roofline (why bf16 is not at 100%).

    python benchmarks/profile_esm.py --roofline benchmarks/results/round3/roofline.json --json profile.json
    python benchmarks/profile_esm.py --smoke          # CPU, tiny model, checks the script

Runs the library's fused packed forward (``PackedESM2``, bf16, random weights of the real architecture)
on translated 150-bp reads (20-80 aa) packed to ``--toks-per-batch``, after warm-up, and under
``torch.profiler`` for ``--steps`` batches. Prints:

* tokens/s over the profiled batches and its share of the roofline (``--roofline``: a
  ``benchmarks/roofline.py`` JSON, its sustained bf16 TFLOP/s; without it, a short probe of the four
  layer GEMMs in this run);
* the forward's wall time split into GPU time per kernel group (GEMM, attention, fused add+LayerNorm,
  GELU, rotary, other) and the idle time between kernels (launch gaps, host work);
* the layer GEMMs inside the model: their achieved TFLOP/s (FLOPs / GEMM kernel time) against the
  roofline's, and the top kernels by GPU time;
* the decomposition ``tokens/s / roofline = (GEMM time / wall) x (in-model GEMM rate / sustained rate)``:
  the first factor is the time spent outside GEMMs, the second the GEMMs' own shortfall.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import random_proteins  # noqa: E402
from _kernels import gemm_rates, kernel_group, pack, sync  # noqa: E402

from virnucdist.models.loading import load_model  # noqa: E402


def _union(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of ``(start, end)`` intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def _top_kernels(kernels, n: int = 10) -> list[dict]:
    """Kernels grouped by name: GPU ms (kernel time, from the trace) and calls, largest first."""
    by: dict[str, list] = {}
    for e in kernels:
        row = by.setdefault(e.name, [0.0, 0])
        row[0] += (e.time_range.end - e.time_range.start) / 1e3
        row[1] += 1
    return [{"kernel": k, "group": kernel_group(k), "gpu_ms": v[0], "calls": v[1]}
            for k, v in sorted(by.items(), key=lambda x: -x[1][0])[:n]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="esm2_t36_3B_UR50D")
    ap.add_argument("--num-seqs", type=int, default=12000)
    ap.add_argument("--toks-per-batch", type=int, default=65536)
    ap.add_argument("--steps", type=int, default=6, help="batches under the profiler")
    ap.add_argument("--roofline", default=None, help="benchmarks/roofline.py JSON (its sustained bf16 TFLOP/s)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--trace", default=None, help="write a chrome trace here")
    ap.add_argument("--smoke", action="store_true", help="CPU, esm2_t6_8M, a few batches")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    name = "esm2_t6_8M_UR50D" if args.smoke else args.model
    budget = 2048 if args.smoke else args.toks_per_batch
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    lm = load_model(name, device=dev, dtype=dtype, random_init=True, seed=0)
    recs = random_proteins(200 if args.smoke else args.num_seqs, 20, 80, seed=1)
    arrays = [lm.tokenizer.encode(s) for _, s in recs]
    batches = pack(arrays, budget, dev)
    cfg = lm.module.cfg
    d, layers = cfg.embed_dim, cfg.num_layers
    flops_per_token = 24 * d * d * layers  # the four layer GEMMs: qkv 3d, out d, fc1 4d, fc2 4d -> 2 x 12 d^2
    fwd = lambda b: lm.module.embed(*b)  # noqa: E731
    steps = batches[2: 2 + args.steps] if len(batches) > 2 + args.steps else batches[-args.steps:]
    tokens = sum(int(b[3][-1]) for b in steps)

    if args.roofline:
        rl = json.loads(Path(args.roofline).read_text())
        sustained = rl["runs"]["bf16"]["sustained_tflops"]
        roof_src = f"sustained, {args.roofline} ({rl.get('device')}, torch {rl.get('torch')})"
    elif dev.type == "cuda":
        rates = gemm_rates(dev, 16384, [(d, 4 * d), (d, 3 * d), (d, d), (4 * d, d)])
        sustained = sum(v for k, v in rates.items() if k.startswith("bf16")) / 4
        roof_src = "short probe in this run (no --roofline)"
    else:
        sustained, roof_src = float("nan"), "none (CPU)"
    roof_tok = sustained * 1e12 / flops_per_token

    with torch.inference_mode():
        for b in batches[:2]:
            fwd(b)
        sync(dev)
        t0 = time.perf_counter()
        for b in steps:
            fwd(b)
        sync(dev)
        plain_s = time.perf_counter() - t0
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                          if dev.type == "cuda" else [])
        with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
            t0 = time.perf_counter()
            for b in steps:
                fwd(b)
            sync(dev)
            prof_s = time.perf_counter() - t0
    if args.trace:
        prof.export_chrome_trace(args.trace)

    kernels = [e for e in prof.events() if str(getattr(e, "device_type", "")).endswith("CUDA")]
    span = busy = 0.0
    groups: dict[str, float] = {}
    if kernels:
        iv = [(e.time_range.start, e.time_range.end) for e in kernels]
        span = (max(b for _, b in iv) - min(a for a, _ in iv)) / 1e6
        busy = _union(iv) / 1e6
        for e in kernels:
            g = kernel_group(e.name)
            groups[g] = groups.get(g, 0.0) + (e.time_range.end - e.time_range.start) / 1e6
    tok_s = tokens / plain_s
    res = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "torch": torch.__version__,
           "model": name, "toks_per_batch": budget, "batches": len(steps), "tokens": tokens,
           "tokens_per_s": tok_s, "tokens_per_s_under_profiler": tokens / prof_s,
           "sustained_tflops": sustained, "roofline_source": roof_src, "roofline_tokens_per_s": roof_tok,
           "of_roofline": tok_s / roof_tok, "gpu_span_s": span, "gpu_busy_s": busy,
           "groups_s": groups, "top_kernels": _top_kernels(kernels)}
    print(f"{res['device']}, torch {torch.__version__}: {name} bf16 fused packed forward, {len(steps)} batches "
          f"of <= {budget} tokens ({tokens:,} tokens, frames of 150-bp reads)")
    print(f"tokens/s {tok_s:,.0f} (under the profiler {tokens / prof_s:,.0f}); roofline {roof_tok:,.0f} tokens/s "
          f"at {sustained:.0f} TFLOP/s [{roof_src}] -> {tok_s / roof_tok:.1%} of roofline")
    if kernels:
        print(f"GPU span {span * 1e3:.1f} ms: kernels busy {busy * 1e3:.1f} ms ({busy / span:.1%}), "
              f"idle between kernels {(span - busy) * 1e3:.1f} ms ({1 - busy / span:.1%})")
        for g, s in sorted(groups.items(), key=lambda x: -x[1]):
            print(f"  {g:<24} {s * 1e3:9.2f} ms  {s / span:6.1%} of span")
        gemm_s = groups.get("GEMM", 0.0)
        in_model = tokens * flops_per_token / gemm_s / 1e12 if gemm_s else float("nan")
        res.update(gemm_share=gemm_s / span, in_model_gemm_tflops=in_model)
        print(f"layer GEMMs inside the model: {in_model:.0f} TFLOP/s ({in_model / sustained:.1%} of sustained "
              f"{sustained:.0f})")
        print(f"decomposition: of roofline {tok_s / roof_tok:.1%} ~= GEMM share of wall {gemm_s / span:.1%} x "
              f"GEMM rate / sustained {in_model / sustained:.1%} = {gemm_s / span * in_model / sustained:.1%}")
        print("top kernels (GPU ms from the trace, calls):")
        for r in res["top_kernels"]:
            print(f"  {r['gpu_ms']:9.2f} ms {r['calls']:5d}x  {r['group']:<22} {r['kernel'][:80]}")
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=70))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
