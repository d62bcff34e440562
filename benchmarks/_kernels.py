"""``throughput.py --task kernels``: the kernel variants of the packed models, one table per model.

Timed as model forwards + pooling on pre-packed batches already on the GPU (no loader, no writer:
the end-to-end rate is the ``esm2`` / ``dnabert`` tasks'), so rows differ only by kernels.

ESM-2 (default 3B, random weights) on frames of 150-bp reads (20-80 aa): fair-esm bf16 (its own
forward and length-sorted batching), virnucdist bf16 unfused (eager ops, ``VIRNUCDIST_FUSED=0``),
bf16 fused (Triton add+LayerNorm / GELU), FP8 (``to_fp8``). DNABERT-S on 150-bp reads: eager vs
fused, padded SDPA vs FlexAttention vs the Triton short-sequence ALiBi kernel. Each row: tokens/s,
fraction of the GEMM roofline measured in the same run, ratio to the baseline, and per-sequence
cosine vs an fp32 eager forward on the first ``--fp32-n`` sequences (min / 0.1th percentile / mean).
A torch.profiler table of one 3B forward (bf16 fused and FP8) goes to ``--out``.

    python benchmarks/throughput.py --task kernels --out $OUT            # on the GPU
    python benchmarks/throughput.py --task kernels --smoke --out /tmp/k  # CPU, tiny
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import random_dna, random_proteins, table

from virnucdist.models import attention, fused
from virnucdist.models.loading import load_model
from virnucdist.packing import pack_token_arrays, plan_batches


def device_name(dev) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def pack(arrays, budget: int, dev):
    """Consecutive sequences up to ``budget`` tokens per batch (the library's packing) -> GPU tensors
    (tokens, positions, seg, cu_seqlens, max_seqlen)."""
    out = []
    for a, b in plan_batches(np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays)), budget):
        pb = pack_token_arrays(arrays[a:b], range(b - a)).to(dev)
        out.append((pb.tokens, pb.positions, pb.seg, pb.cu_seqlens, pb.max_seqlen))
    return out


@torch.inference_mode()
def run(fn, batches, dev, warm: int = 2):
    """(seconds, tokens, embeddings [N, D] fp32 on the CPU) of ``fn(batch)`` over all batches, after warm-up."""
    for b in batches[:warm]:
        fn(b)
    sync(dev)
    t0 = time.perf_counter()
    outs = [fn(b) for b in batches]
    sync(dev)
    seconds = time.perf_counter() - t0
    return seconds, sum(int(b[-2][-1]) for b in batches), torch.cat([o.float().cpu() for o in outs])


def cos_stats(emb, ref) -> dict:
    c = F.cosine_similarity(emb.double(), ref.double(), dim=-1)
    return {"cos_min": c.min().item(), "cos_p01": torch.quantile(c, 0.001).item(), "cos_mean": c.mean().item()}


def bench(fn, dev, iters: int = 10) -> float:
    fn()
    sync(dev)
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        sync(dev)
        return start.elapsed_time(end) / 1e3 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def gemm_rates(dev, m: int, dims: list[tuple[int, int]]) -> dict:
    """TFLOP/s of bf16 ``F.linear`` and of rowwise-scaled e4m3 ``torch._scaled_mm`` at [m, k] x [k, n]."""
    from virnucdist.models.fp8 import fp8_supported

    out = {}
    for k, n in dims:
        a = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
        flops = 2 * m * k * n
        out[f"bf16 {m}x{k}x{n}"] = flops / bench(lambda: F.linear(a, w), dev) / 1e12
        if fp8_supported(dev):
            aq, wq = a.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
            sa = torch.rand(m, 1, device=dev) + 0.5
            sb = torch.rand(1, n, device=dev) + 0.5
            for fast in (False, True):
                out[f"fp8{' fast' if fast else ''} {m}x{k}x{n}"] = flops / bench(
                    lambda: torch._scaled_mm(aq, wq.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16,
                                             use_fast_accum=fast), dev) / 1e12
        del a, w
    return out


def kernel_group(name: str) -> str:
    """What a CUDA kernel does, from its name: GEMM, attention, the fused kernels, or other."""
    n = name.lower()
    # attention first: flash-attention's kernel names carry cutlass types (they would read as GEMMs)
    return ("attention" if any(s in n for s in ("flash", "attn", "fmha")) else
            "GEMM" if any(s in n for s in ("nvjet", "gemm", "cutlass", "xmma", "scaled_mm", "sm90")) else
            "add+LayerNorm (fused)" if "add_ln_kernel" in n else
            "GELU (fused)" if "gelu_kernel" in n else
            "FP8 quant (fused)" if "quant_kernel" in n else
            "rotary" if "rotary" in n else
            "LayerNorm (eager)" if "layer_norm" in n else
            "GELU (eager)" if "gelu" in n else "other")


def profile(fn, batch, dev, path: Path, title: str) -> str:
    """Top kernels by GPU time of one forward; the full table goes to ``path``."""
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.inference_mode():
        fn(batch)
        sync(dev)
        with torch.profiler.profile(activities=acts) as prof:
            fn(batch)
            sync(dev)
    evs = [e for e in prof.key_averages() if str(getattr(e, "device_type", "")).endswith("CUDA")]
    t = lambda e: getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)  # noqa: E731
    total = sum(t(e) for e in evs) or 1
    groups: dict[str, float] = {}
    for e in evs:
        g = kernel_group(e.key)
        groups[g] = groups.get(g, 0) + t(e)
    lines = [f"{title}: {total / 1e3:.1f} ms GPU time, {int(batch[0].numel())} tokens"]
    lines += [f"  {g:<24} {v / 1e3:8.2f} ms  {v / total:6.1%}" for g, v in sorted(groups.items(), key=lambda x: -x[1])]
    evs.sort(key=t, reverse=True)
    lines += ["  top kernels:"] + [f"    {t(e) / 1e3:8.2f} ms {t(e) / total:6.1%}  {e.count:5d}x  {e.key[:90]}" for e in evs[:15]]
    text = "\n".join(lines)
    path.write_text(text + "\n\n" + prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40,
                                                              max_name_column_width=90))
    return text


def esm_kernels(args, dev, out: Path) -> dict:
    from _fair_esm import fair_esm_from_packed, run_fair_esm

    from virnucdist.models.fp8 import fp8_supported, to_fp8

    name = "esm2_t6_8M_UR50D" if args.smoke else args.model
    n = min(args.num_seqs, 200) if args.smoke else args.num_seqs
    budget = args.toks_per_batch or (4096 if args.smoke else 65536)
    recs = random_proteins(n, 20, 80, seed=1)  # frames of 150-bp reads
    lm = load_model(name, device=dev, dtype=torch.bfloat16, random_init=True, seed=0)
    arrays = [lm.tokenizer.encode(s) for _, s in recs]
    batches = pack(arrays, budget, dev)
    n_ref = min(args.fp32_n, n)
    sub = pack(arrays[:n_ref], budget, dev)
    params = sum(p.numel() for p in lm.module.parameters()) - lm.module.embed_tokens.weight.numel()
    dname = device_name(dev)
    res: dict = {"device": dname, "model": name, "sequences": n, "toks_per_batch": budget, "rows": {}}

    d = lm.module.cfg.embed_dim
    if dev.type == "cuda":
        m = 16384
        res["gemm_tflops"] = gemm_rates(dev, m, [(d, 4 * d), (d, 3 * d), (d, d), (4 * d, d)])
        peak = res["gemm_tflops"][f"bf16 {m}x{d}x{4 * d}"]
        print(f"[{dname}] GEMM TFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in res["gemm_tflops"].items()),
              flush=True)
    else:
        peak = float("nan")
    roof = peak * 1e12 / (2 * params)
    res.update(bf16_gemm_peak_tflops=peak, roofline_tokens_per_s=roof, params_non_embedding=params)
    print(f"[{dname}] {name}: {params / 1e9:.3f}B non-embedding params, {n} frames of 150-bp reads "
          f"({sum(map(len, arrays)):,} tokens), budget {budget}; bf16 roofline {roof:,.0f} tokens/s", flush=True)

    # fp32 reference: the eager fp32 forward of the same (pre-bf16) weights
    fused.set_enabled(False)
    lm32 = load_model(name, device=dev, dtype=torch.float32, random_init=True, seed=0)
    _, _, ref = run(lambda b: lm32.module.embed(*b), sub, dev, warm=0)
    del lm32
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    rows = res["rows"]
    try:
        fe = fair_esm_from_packed(lm.module, torch.bfloat16, dev)
    except ImportError:
        fe = None
        print(f"[{dname}] fair-esm not importable: its row is skipped (carry its wheel in .whl/)", flush=True)
    if fe is not None:
        run_fair_esm(fe, recs[:200], args.esm_toks, dev)
        s, toks, emb = run_fair_esm(fe, recs, args.esm_toks, dev)
        rows["fair-esm bf16"] = {"tokens_per_s": toks / s, "seqs_per_s": n / s,
                                 **cos_stats(torch.stack([emb[r].float().cpu() for r, _ in recs[:n_ref]]), ref)}
        del fe, emb
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    variants = [("virnucdist bf16 unfused", False), ("virnucdist bf16 fused", True)]
    for label, on in variants:
        fused.set_enabled(on)
        s, toks, _ = run(lambda b: lm.module.embed(*b), batches, dev)
        _, _, emb = run(lambda b: lm.module.embed(*b), sub, dev, warm=0)
        rows[label] = {"tokens_per_s": toks / s, "seqs_per_s": n / s, **cos_stats(emb, ref)}
        print(f"[{dname}] {label}: {rows[label]}", flush=True)
    fused.set_enabled(True)
    big = max(batches, key=lambda b: int(b[3][-1]))
    if dev.type == "cuda":
        print(profile(lambda b: lm.module.embed(*b), big, dev, out / "profile_esm_bf16_fused.txt",
                      f"[{dname}] {name} bf16 fused, one forward"), flush=True)
    if fp8_supported(dev):
        to_fp8(lm.module)
        s, toks, _ = run(lambda b: lm.module.embed(*b), batches, dev)
        _, _, emb = run(lambda b: lm.module.embed(*b), sub, dev, warm=0)
        rows["virnucdist fp8"] = {"tokens_per_s": toks / s, "seqs_per_s": n / s, **cos_stats(emb, ref)}
        print(profile(lambda b: lm.module.embed(*b), big, dev, out / "profile_esm_fp8.txt",
                      f"[{dname}] {name} fp8, one forward"), flush=True)
    else:
        print(f"[{dname}] fp8: skipped (no FP8 tensor cores)", flush=True)
    base = rows.get("fair-esm bf16", rows["virnucdist bf16 unfused"])["tokens_per_s"]
    for r in rows.values():
        r["of_bf16_roofline"] = r["tokens_per_s"] / roof
        r["x_fair_esm"] = r["tokens_per_s"] / base
    return res


def dnabert_kernels(args, dev, out: Path) -> dict:
    n = min(args.dna_reads, 200) if args.smoke else args.dna_reads
    budget = 8192 if args.smoke else args.dna_toks
    lm = load_model("dnabert-s", device=dev, dtype=torch.bfloat16, random_init=True, seed=0)
    recs = random_dna(n, 150, seed=150)
    arrays = lm.tokenizer.encode_batch([s for _, s in recs])
    dev_batches = pack(arrays, budget, dev)
    batches = [(b[0], b[3], b[4]) for b in dev_batches]
    n_ref = min(args.fp32_n, n)
    sub = [(b[0], b[3], b[4]) for b in pack(arrays[:n_ref], budget, dev)]
    enc = lm.module.encoder
    params = sum(p.numel() for p in enc.parameters())
    dname = device_name(dev)
    peak = float("nan")
    if dev.type == "cuda":
        h, i = lm.module.config.hidden_size, lm.module.config.intermediate_size
        rates = gemm_rates(dev, 65536, [(h, 3 * h), (h, h), (h, 2 * i), (i, h)])
        flops = {k: 2 * 65536 * int(k.split("x")[1]) * int(k.split("x")[2]) for k in rates if k.startswith("bf16")}
        # the layer's own GEMM shapes, back to back: the roofline of a GEMM-bound DNABERT-S
        peak = sum(flops.values()) / sum(f / rates[k] for k, f in flops.items())
    roof = peak * 1e12 / (2 * params)
    res: dict = {"device": dname, "model": "DNABERT-S", "reads": n, "read_length": 150, "toks_per_batch": budget,
                 "layer_gemm_tflops": peak, "roofline_tokens_per_s": roof, "rows": {}}
    print(f"[{dname}] DNABERT-S: {n} 150-bp reads ({sum(map(len, arrays)):,} tokens, max "
          f"{max(map(len, arrays))}), budget {budget}; layer-GEMM rate {peak:.0f} TFLOP/s -> roofline "
          f"{roof:,.0f} tokens/s", flush=True)
    fused.set_enabled(False)
    lm32 = load_model("dnabert-s", device=dev, dtype=torch.float32, random_init=True, seed=0)
    attention.ALIBI_KERNEL = "sdpa"
    _, _, ref = run(lambda b: lm32.module.embed(*b), sub, dev, warm=0)
    del lm32
    variants = [("eager, padded SDPA (fp32 bias)", False, "sdpa"), ("eager, FlexAttention", False, "flex"),
                ("fused, FlexAttention", True, "flex"), ("fused, Triton ALiBi (default)", True, "auto")]
    if dev.type != "cuda":
        variants = [v for v in variants if v[2] != "flex"]
    rows = res["rows"]
    for label, on, kern in variants:
        fused.set_enabled(on)
        attention.ALIBI_KERNEL = kern
        used = attention.kernel_name(dev, alibi=True, dtype=torch.bfloat16, max_seqlen=batches[0][2])
        s, toks, _ = run(lambda b: lm.module.embed(*b), batches, dev, warm=3)
        _, _, emb = run(lambda b: lm.module.embed(*b), sub, dev, warm=0)
        rows[label] = {"kernel": used, "tokens_per_s": toks / s, "seqs_per_s": n / s, **cos_stats(emb, ref)}
        print(f"[{dname}] DNABERT-S {label}: {rows[label]}", flush=True)
    fused.set_enabled(True)
    attention.ALIBI_KERNEL = "auto"
    base = rows["eager, padded SDPA (fp32 bias)"]["tokens_per_s"]
    for r in rows.values():
        r["of_bf16_roofline"] = r["tokens_per_s"] / roof
        r["x_eager"] = r["tokens_per_s"] / base
    if dev.type == "cuda":
        print(profile(lambda b: lm.module.embed(*b), max(batches, key=lambda b: int(b[1][-1])), dev,
                      out / "profile_dnabert_fused.txt", f"[{dname}] DNABERT-S fused, one forward"), flush=True)
    return res


def main(args) -> None:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out or ".")
    out.mkdir(parents=True, exist_ok=True)
    which = args.which.split(",")
    results = {}
    cols = [("impl", f"{'implementation':<44}", "s"), ("tokens_per_s", "tokens/s", ",.0f"), ("seqs_per_s", "seq/s", ",.0f"),
            ("of_bf16_roofline", "of roofline", ".1%"), ("x", "x base", ".2f"), ("cos_min", "cos min", ".6f"),
            ("cos_p01", "cos p0.1", ".6f"), ("cos_mean", "cos mean", ".6f")]
    tables = []
    if "esm2" in which:
        r = results["esm2"] = esm_kernels(args, dev, out)
        rows = [{"impl": k, "x": v["x_fair_esm"], **v} for k, v in r["rows"].items()]
        tables.append(f"== [{r['device']}] {r['model']}, {r['sequences']} frames of 150-bp reads (20-80 aa), "
                      f"budget {r['toks_per_batch']}; bf16 GEMM {r['bf16_gemm_peak_tflops']:.0f} TFLOP/s -> "
                      f"roofline {r['roofline_tokens_per_s']:,.0f} tokens/s; x base = vs fair-esm bf16; "
                      f"cosine vs fp32 per sequence\n" + table(rows, cols))
    if "dnabert" in which:
        r = results["dnabert"] = dnabert_kernels(args, dev, out)
        rows = [{"impl": f"{k} [{v['kernel']}]", "x": v["x_eager"], **v} for k, v in r["rows"].items()]
        tables.append(f"== [{r['device']}] DNABERT-S, {r['reads']} 150-bp reads, budget {r['toks_per_batch']}; "
                      f"layer GEMMs {r['layer_gemm_tflops']:.0f} TFLOP/s -> roofline "
                      f"{r['roofline_tokens_per_s']:,.0f} tokens/s; x base = vs eager padded SDPA\n" + table(rows, cols))
    text = "\n\n".join(tables)
    print("\n" + text, flush=True)
    (out / f"kernels_{'_'.join(which)}.txt").write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
