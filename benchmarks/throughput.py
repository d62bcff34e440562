"""Single-GPU throughput: virnucdist vs the usual tools on the same weights, in one process.

    torchrun --standalone --nproc_per_node=1 benchmarks/throughput.py \
        --model esm2_t36_3B_UR50D --num-seqs 10000 --json throughput.json
    torchrun --standalone --nproc_per_node=1 benchmarks/throughput.py --task dnabert --json dnabert.json

DNABERT-S (--task dnabert; random weights unless --dnabert-model is a real
directory): 150-bp and 500-bp random reads, virnucdist packed (bf16) vs the
original method (one read at a time, fp32) and padded batched inference (bf16,
--padded-batch reads per batch), both through the same padded reference forward
(benchmarks/_dnabert_baselines.py); and the two ALiBi attention kernels.

ESM-2 (random weights unless --model is a real .pt): per workload (a: 20-80 aa,
b: 100-170 aa) it times fair-esm's own forward with its length-sorted
``FastaBatchedDataset.get_batch_indices`` batching (bf16, and fp32 on the first
--fp32-n sequences), then ``virnucdist.embed`` end to end (index, packing
loader, model, shard writer; the inference phase is timed). It also measures
the bf16 GEMM peak and reports each rate as a fraction of the GEMM roofline
(2 x parameters FLOPs per token). Pooling for fair-esm runs on the GPU (mean
over residues per sequence, as extract.py computes it), which is stricter than
extract.py's copy of full per-token tensors to the host.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    PROTEIN_WORKLOADS,
    Timer,
    gemm_peak_tflops,
    random_dna,
    random_proteins,
    table,
    write_fasta,
)
from _dnabert_baselines import padded_embed  # noqa: E402
from _fair_esm import fair_esm_from_packed, run_fair_esm  # noqa: E402

from virnucdist.models.loading import load_model  # noqa: E402


def bench_dnabert(args, ctx) -> dict:
    from virnucdist import EmbedConfig, embed
    from virnucdist.models import attention
    from virnucdist.writers import read_embeddings

    dev = ctx.device
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    spec = args.dnabert_model or "dnabert-s"
    lm = load_model(spec, device=dev, dtype=half, random_init=args.dnabert_model is None, seed=0)
    lm32 = load_model(spec, device=dev, dtype=torch.float32, random_init=args.dnabert_model is None, seed=0)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vnd-dnabert-"))
    rows, results = [], {"device": str(dev), "model": "DNABERT-S", "workloads": {}}
    for length, n in ((150, args.dna_reads), (500, max(1, args.dna_reads // 3))):
        recs = random_dna(n, length, seed=length)
        toks = [lm.tokenizer.encode(s) for _, s in recs]
        res: dict = {}
        sub = toks[:args.original_n]
        padded_embed(lm32.module, sub[:5], dev)
        with Timer(dev) as t:
            orig = [padded_embed(lm32.module, [x], dev) for x in sub]
        res["original_fp32_one_at_a_time"] = {"tokens_per_s": sum(map(len, sub)) / t.seconds,
                                              "seqs_per_s": len(sub) / t.seconds}
        pb = args.padded_batch
        padded_embed(lm.module, toks[:pb], dev)
        sub2 = toks[:min(len(toks), 20 * pb)]
        with Timer(dev) as t:
            for i in range(0, len(sub2), pb):
                padded_embed(lm.module, sub2[i:i + pb], dev)
        res[f"padded_batched_{args.dtype}"] = {"tokens_per_s": sum(map(len, sub2)) / t.seconds,
                                               "seqs_per_s": len(sub2) / t.seconds}
        fasta = write_fasta(work / f"reads_{length}.fa", recs)
        for kernel in ("flex", "sdpa", "triton"):
            attention.ALIBI_KERNEL = kernel
            warm = EmbedConfig(inputs=(str(write_fasta(work / f"warm_{length}.fa", recs[:2000])),), model=spec,
                               output_dir=str(work / f"warm_{length}_{kernel}"), toks_per_batch=args.dna_toks,
                               quiet=True, dtype=args.dtype, overwrite=True, num_workers=args.workers)
            embed(warm, ctx, model=lm)
            cfg = EmbedConfig(inputs=(str(fasta),), model=spec, output_dir=str(work / f"out_{length}_{kernel}"),
                              toks_per_batch=args.dna_toks, quiet=True, dtype=args.dtype, overwrite=True,
                              num_workers=args.workers)
            rep = embed(cfg, ctx, model=lm).report
            r0 = rep["ranks"][0]
            inf = r0["phases"]["inference"]
            res[f"virnucdist_{kernel}"] = {"tokens_per_s": r0["tokens"] / inf, "seqs_per_s": r0["sequences"] / inf,
                                          "wall_s": rep["summary"]["wall_s"], "gpu_util_mean": r0["gpu_util_mean"],
                                          "packing_efficiency": r0["packing_efficiency"],
                                          "peak_mem_gib": r0["peak_gpu_mem_gib"]}
            ids, emb = read_embeddings(cfg.output_dir + "/embeddings.h5")
            ref = torch.cat(orig).cpu()
            cos = torch.nn.functional.cosine_similarity(torch.from_numpy(emb[:len(sub)]), ref)
            res[f"virnucdist_{kernel}"]["min_cosine_vs_original_fp32"] = float(cos.min())
        attention.ALIBI_KERNEL = "auto"
        best = max(res[k]["tokens_per_s"] for k in ("virnucdist_flex", "virnucdist_sdpa", "virnucdist_triton"))
        for name, r in res.items():
            rows.append({"wl": f"{length} bp", "impl": name, "tps": r["tokens_per_s"], "sps": r["seqs_per_s"],
                         "xo": best / res["original_fp32_one_at_a_time"]["tokens_per_s"],
                         "xp": best / res[f"padded_batched_{args.dtype}"]["tokens_per_s"],
                         "cos": r.get("min_cosine_vs_original_fp32"), "util": r.get("gpu_util_mean")})
        results["workloads"][f"{length}bp"] = res
        print(f"{length} bp done: {res}", flush=True)
    print(table(rows, [("wl", "reads", "s"), ("impl", "implementation", "s"), ("tps", "tokens/s", ",.0f"),
                       ("sps", "seq/s", ",.0f"), ("xo", "best/original", ".1f"), ("xp", "best/padded", ".2f"),
                       ("cos", "min cos", ".5f"), ("util", "gpu util %", ".0f")]))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["esm2", "dnabert", "kernels"], default="esm2",
                    help="kernels: model-level table of the kernel variants (no torchrun needed); see _kernels.py")
    ap.add_argument("--smoke", action="store_true", help="kernels task: tiny sizes (esm2_t6_8M_UR50D), runs on CPU")
    ap.add_argument("--which", default="esm2,dnabert", help="kernels task: esm2, dnabert or both")
    ap.add_argument("--out", default=None, help="kernels task: directory for the table and profiler files")
    ap.add_argument("--dnabert-model", default=None, help="a real DNABERT-S directory (default: random weights)")
    ap.add_argument("--dna-reads", type=int, default=60000, help="150-bp reads (500-bp: a third of that)")
    ap.add_argument("--dna-toks", type=int, default=262144, help="virnucdist token budget for DNABERT-S")
    ap.add_argument("--original-n", type=int, default=500, help="reads for the one-at-a-time fp32 baseline")
    ap.add_argument("--padded-batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=6, help="DataLoader workers")
    ap.add_argument("--model", default="esm2_t36_3B_UR50D", help="ESM-2 name (random weights) or a real .pt")
    ap.add_argument("--workloads", default="a,b")
    ap.add_argument("--num-seqs", type=int, default=10000, help="sequences per workload")
    ap.add_argument("--fp32-n", type=int, default=1000, help="sequences for the slow fair-esm fp32 baseline")
    ap.add_argument("--esm-toks", type=int, default=4096, help="fair-esm toks_per_batch (extract.py default)")
    ap.add_argument("--toks-per-batch", type=int, default=None, help="virnucdist token budget")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    if args.task == "kernels":
        from _kernels import main as kernels_main

        kernels_main(args)
        return

    from virnucdist import EmbedConfig, embed
    from virnucdist.launch import init_distributed
    from virnucdist.writers import read_embeddings

    ctx = init_distributed()
    if args.task == "dnabert":
        results = bench_dnabert(args, ctx)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
        ctx.shutdown()
        return
    dev = ctx.device
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    peak = gemm_peak_tflops(dev)
    real = args.model.endswith(".pt")
    lm = load_model(args.model, device=dev, dtype=half, random_init=not real, seed=0)
    params = sum(p.numel() for p in lm.module.parameters()) - lm.module.embed_tokens.weight.numel()
    roof_tps = peak * 1e12 / (2 * params) if peak == peak else float("nan")
    print(f"device {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}; model {lm.name} "
          f"({params / 1e9:.2f}B non-embedding params); bf16 GEMM peak {peak:.0f} TFLOP/s -> roofline "
          f"{roof_tps:,.0f} tokens/s", flush=True)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="vnd-throughput-"))
    rows, results = [], {"device": str(dev), "gemm_peak_tflops": peak, "roofline_tokens_per_s": roof_tps,
                         "model": lm.name, "params_non_embedding": params, "workloads": {}}
    for wl in args.workloads.split(","):
        lo, hi = PROTEIN_WORKLOADS[wl]
        recs = random_proteins(args.num_seqs, lo, hi, seed={"a": 1, "b": 2}.get(wl, 3))
        fasta = write_fasta(work / f"workload_{wl}.fa", recs)
        res: dict = {}
        fair_ref = None
        if not args.skip_baselines:
            ref = fair_esm_from_packed(lm.module, half, dev)
            run_fair_esm(ref, recs[:200], args.esm_toks, dev)  # warm-up
            torch.cuda.reset_peak_memory_stats(dev) if dev.type == "cuda" else None
            s, toks, _ = run_fair_esm(ref, recs, args.esm_toks, dev)
            res["fair_esm_half"] = {"seconds": s, "tokens": toks, "tokens_per_s": toks / s, "seqs_per_s": len(recs) / s,
                                    "peak_mem_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None}
            del ref
            ref32 = fair_esm_from_packed(lm.module, torch.float32, dev)
            sub = recs[:args.fp32_n]
            run_fair_esm(ref32, sub[:50], args.esm_toks, dev)
            s, toks, fair_ref = run_fair_esm(ref32, sub, args.esm_toks, dev)
            res["fair_esm_fp32"] = {"seconds": s, "tokens": toks, "tokens_per_s": toks / s, "seqs_per_s": len(sub) / s}
            del ref32
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        # warm-up run (kernels, allocator), then the timed run
        warm = EmbedConfig(inputs=(str(write_fasta(work / f"warm_{wl}.fa", recs[:500])),), model=lm.name,
                           output_dir=str(work / f"warm_{wl}"), toks_per_batch=args.toks_per_batch, quiet=True,
                           dtype=args.dtype, overwrite=True)
        embed(warm, ctx, model=lm)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        cfg = EmbedConfig(inputs=(str(fasta),), model=lm.name, output_dir=str(work / f"out_{wl}"),
                          toks_per_batch=args.toks_per_batch, quiet=True, dtype=args.dtype, overwrite=True)
        rep = embed(cfg, ctx, model=lm).report
        r0 = rep["ranks"][0]
        inf = r0["phases"]["inference"]
        res["virnucdist"] = {"seconds": inf, "wall_s": rep["summary"]["wall_s"], "tokens": r0["tokens"],
                             "tokens_per_s": r0["tokens"] / inf, "seqs_per_s": r0["sequences"] / inf,
                             "packing_efficiency": r0["packing_efficiency"], "toks_per_batch": r0["toks_per_batch"],
                             "peak_mem_gib": r0["peak_gpu_mem_gib"], "gpu_util_mean": r0["gpu_util_mean"]}
        if fair_ref is not None:
            ids, emb = read_embeddings(cfg.output_dir + "/embeddings.h5")
            pos = {k: i for i, k in enumerate(ids)}
            a = torch.stack([fair_ref[k].float().cpu() for k in fair_ref])
            b = torch.from_numpy(emb[[pos[k] for k in fair_ref]])
            cos = torch.nn.functional.cosine_similarity(a, b)
            res["cosine_vs_fair_esm_fp32"] = {"min": float(cos.min()), "mean": float(cos.mean()), "n": len(cos)}
        results["workloads"][wl] = res
        v = res["virnucdist"]["tokens_per_s"]
        for name, key in [("fair-esm fp32", "fair_esm_fp32"), (f"fair-esm {args.dtype}", "fair_esm_half"),
                          (f"virnucdist {args.dtype}", "virnucdist")]:
            if key in res:
                r = res[key]
                rows.append({"wl": f"{wl} ({lo}-{hi} aa)", "impl": name, "tps": r["tokens_per_s"],
                             "sps": r["seqs_per_s"], "x32": v / res["fair_esm_fp32"]["tokens_per_s"] if "fair_esm_fp32" in res else None,
                             "xh": v / res["fair_esm_half"]["tokens_per_s"] if "fair_esm_half" in res else None,
                             "roof": r["tokens_per_s"] / roof_tps, "mem": r.get("peak_mem_gib"),
                             "pack": r.get("packing_efficiency")})
        print(f"workload {wl} done: {res}", flush=True)
    print(table(rows, [("wl", "workload", "s"), ("impl", "implementation", "s"), ("tps", "tokens/s", ",.0f"),
                       ("sps", "seq/s", ",.0f"), ("x32", "vnd/fp32", ".2f"), ("xh", "vnd/half", ".2f"),
                       ("roof", "roofline", ".1%"), ("mem", "peak GiB", ".1f"), ("pack", "packing", ".1%")]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    ctx.shutdown()


if __name__ == "__main__":
    main()
