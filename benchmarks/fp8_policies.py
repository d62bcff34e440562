"""FP8 precision policies of ESM-2: the speed / fidelity curve of each, in one run, against bf16 and fp32.

    python benchmarks/fp8_policies.py --json fp8_policies.json            # GPU: ESM-2 3B, 10,000 frames
    python benchmarks/fp8_policies.py --smoke                              # CPU: tiny, seconds (emulated FP8)

Workload: the stop-free translated frames of random 150-bp reads (chunk 300, VirNucPro's six frames),
the first ``--frames`` of them, packed at ``--toks-per-batch``. Random weights of the real
architectures (seed 0); the fp32 reference is the eager fp32 forward of the same weights.

Per policy (:data:`virnucdist.models.fp8.POLICIES`, or ``--policies`` with policy strings such as
``gemms=qkv+fc1+fc2;first=2;last=2``): tokens/s of the model forward + pooling on batches already on
the GPU, its ratio to bf16 in the same run, cosine of each frame's embedding to fp32 (min / 0.1th
percentile / mean over all frames) and frame-label agreement with fp32 on the frames of the first
``--label-reads`` reads: labels from a random VirNucPro classifier on [DNABERT-S fp32 embedding of the
frame's nucleotides, ESM-2 embedding of its protein], so only ESM-2's precision differs. The last line
names the fastest policy that meets the targets (min cosine >= 0.999, agreement >= 99.99%, >= 1.35x bf16).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import random_dna, table  # noqa: E402
from _kernels import cos_stats, device_name, pack, run, sync  # noqa: E402

from virnucdist.models import fused  # noqa: E402
from virnucdist.models.fp8 import POLICIES, FP8Policy, fp8_supported, quantize_model  # noqa: E402
from virnucdist.models.loading import load_model  # noqa: E402
from virnucdist.models.random_init import random_classifier  # noqa: E402
from virnucdist.vnp.chunk import chunk_records  # noqa: E402
from virnucdist.vnp.translate import translate_records  # noqa: E402

TARGET_COS, TARGET_AGREE, TARGET_SPEEDUP = 0.999, 0.9999, 1.35
GEMM_WEIGHT = {"qkv": 3, "out": 1, "fc1": 4, "fc2": 4}  # FLOPs per token in units of d^2


def frames_of_reads(n_frames: int, label_reads: int, seed: int = 21):
    """(frames, number of the first frames that come from the first ``label_reads`` reads)."""
    frames, n_label, read_no, batch = [], 0, 0, max(2 * n_frames, 64)
    while len(frames) < n_frames:
        for _, seq in random_dna(batch, 150, seed=seed + read_no):
            fr = list(translate_records([(f"r{read_no}", seq)]))
            frames += fr
            read_no += 1
            if read_no <= label_reads:
                n_label += len(fr)
            if len(frames) >= n_frames:
                break
    return frames[:n_frames], min(n_label, n_frames)


def fp8_share(policy: FP8Policy, layers: int) -> float:
    """Fraction of the layer GEMM FLOPs that the policy runs in FP8."""
    on = sum(GEMM_WEIGHT[g] for g in policy.gemms) * max(0, layers - policy.bf16_first - policy.bf16_last)
    return on / (sum(GEMM_WEIGHT.values()) * layers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="esm2_t36_3B_UR50D")
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--label-reads", type=int, default=5000)
    ap.add_argument("--toks-per-batch", type=int, default=65536)
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated names or policy strings "
                                                                   "(';' inside a policy string)")
    ap.add_argument("--smoke", action="store_true", help="tiny models and workload, runs on CPU in seconds")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        if args.model == ap.get_default("model"):  # tiny unless a model is named
            args.model = "esm2_t6_8M_UR50D"
        args.frames, args.label_reads, args.toks_per_batch = 96, 60, 2048
        if args.policies == ",".join(POLICIES):
            args.policies = "all,first2,gemms=qkv+fc1+fc2;first=1;last=1"
    dna_name = "dnabert-s-tiny" if args.smoke else "dnabert-s"
    real_fp8 = fp8_supported(dev)
    if not real_fp8 and not args.smoke:
        print(f"[{device_name(dev)}] no FP8 tensor cores: policies run EMULATED (fidelity only, speeds mean nothing)")
    dname = device_name(dev)
    t0 = time.perf_counter()
    frames, n_label = frames_of_reads(args.frames, args.label_reads)

    # fp32 references: ESM-2 (eager, for the cosines) and DNABERT-S (the classifier's other half)
    fused.set_enabled(False)
    dna = load_model(dna_name, device=dev, dtype=torch.float32, random_init=True, seed=0)
    dna_arrays = dna.tokenizer.encode_batch([f.nucleotide for f in frames[:n_label]])
    _, _, dna_emb = run(lambda b: dna.module.embed(b[0], b[3], b[4]), pack(dna_arrays, 8 * args.toks_per_batch
                                                                          if not args.smoke else 4096, dev), dev, 0)
    del dna
    lm32 = load_model(args.model, device=dev, dtype=torch.float32, random_init=True, seed=0)
    arrays = [lm32.tokenizer.encode(f.protein) for f in frames]
    batches = pack(arrays, args.toks_per_batch, dev)
    tokens = sum(map(len, arrays))
    t1 = time.perf_counter()
    s32, _, ref = run(lambda b: lm32.module.embed(*b), batches, dev, warm=0)
    layers, esm_dim = lm32.module.cfg.num_layers, lm32.module.cfg.embed_dim
    del lm32
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    fused.set_enabled(True)
    print(f"[{dname}] {args.model}: {len(frames)} frames ({tokens:,} tokens; labels on the first {n_label}, from "
          f"{args.label_reads} reads), budget {args.toks_per_batch}; fp32 reference {time.perf_counter() - t1:.1f} s "
          f"({tokens / s32:,.0f} tokens/s)", flush=True)

    clf = random_classifier(dna_emb.shape[1] + esm_dim, seed=0).double()

    def labels(esm_emb):
        with torch.no_grad():
            logits = clf(torch.cat([dna_emb.double(), esm_emb[:n_label].double()], 1))
        return logits.argmax(1), torch.softmax(logits, 1)[:, 0]

    ref_lab, ref_p = labels(ref)
    lm = load_model(args.model, device=dev, dtype=torch.bfloat16, random_init=True, seed=0)
    rows = []

    def measure(name, share):
        s, toks, emb = run(lambda b: lm.module.embed(*b), batches, dev, warm=0 if args.smoke else 1)
        lab, p = labels(emb)
        row = {"policy": name, "fp8_share": share, "tokens_per_s": toks / s, **cos_stats(emb, ref),
               "label_agreement": (lab == ref_lab).double().mean().item(), "label_flips": int((lab != ref_lab).sum()),
               "max_prob_diff": (p - ref_p).abs().max().item()}
        rows.append(row)
        if args.json:  # after every row: a step cut by its timeout still leaves the rows done
            Path(args.json).write_text(json.dumps({"device": dname, "model": args.model, "partial": True,
                                                   "rows": rows}, indent=2))
        print(f"[{dname}] {name}: " + ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                                                for k, v in row.items() if k != "policy"), flush=True)

    measure("bf16", 0.0)
    linears = [(layer, path, layer.get_submodule(path)) for layer in lm.module.layers
               for path in ("self_attn.qkv", "self_attn.out_proj", "fc1", "fc2")]
    for text in args.policies.split(","):
        policy = FP8Policy.parse(text)
        quantize_model(lm.module, policy)
        measure(text, fp8_share(policy, layers))
        for layer, path, mod in linears:  # back to bf16 for the next policy
            parent, _, attr = path.rpartition(".")
            setattr(layer.get_submodule(parent) if parent else layer, attr, mod)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    sync(dev)
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["x_bf16"] = r["tokens_per_s"] / base
    cols = [("policy", f"{'policy':<36}", "s"), ("fp8_share", "fp8 FLOPs", ".0%"), ("tokens_per_s", "tokens/s", ",.0f"),
            ("x_bf16", "x bf16", ".3f"), ("cos_min", "cos min", ".6f"), ("cos_p01", "cos p0.1", ".6f"),
            ("cos_mean", "cos mean", ".6f"), ("label_agreement", "labels =", ".4%"), ("label_flips", "flips", "d"),
            ("max_prob_diff", "max dP", ".1e")]
    print(f"\n== [{dname}] {args.model}, {len(frames)} frames, labels on {n_label}; FP8 "
          f"{'tensor cores' if real_fp8 else 'EMULATED (speeds mean nothing)'}; cosine and labels vs fp32\n"
          + table(rows, cols))
    ok = [r for r in rows[1:] if r["cos_min"] >= TARGET_COS and r["label_agreement"] >= TARGET_AGREE
          and r["fp8_share"] > 0]
    fast = [r for r in ok if r["x_bf16"] >= TARGET_SPEEDUP]
    best = max(fast or ok, key=lambda r: r["tokens_per_s"]) if ok else None
    print(f"policies meeting cos >= {TARGET_COS} and agreement >= {TARGET_AGREE:.2%}: "
          f"{', '.join(r['policy'] for r in ok) or 'none'}; fastest: "
          f"{best['policy'] + ' (%.3fx bf16)' % best['x_bf16'] if best else 'none'}"
          f"{'' if fast else '; none reaches %.2fx bf16' % TARGET_SPEEDUP}; {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dname, "model": args.model, "frames": len(frames),
                                               "label_frames": n_label, "tokens": tokens, "fp8_real": real_fp8,
                                               "rows": rows, "best": best and best["policy"]}, indent=2))


if __name__ == "__main__":
    main()
