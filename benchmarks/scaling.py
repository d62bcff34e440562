"""Multi-GPU scaling: the same workload on N ranks, per-rank telemetry, speedup vs a 1-rank run.

    torchrun --standalone --nproc_per_node=1 benchmarks/scaling.py --json run1.json
    torchrun --standalone --nproc_per_node=2 benchmarks/scaling.py --baseline run1.json --json run2.json

Workload (default): --reads random 150-bp reads (--read-length 500 for the
500-bp variant). Tasks: ``esm2`` embeds the reads' stop-free translated frames
with random-weight ESM-2 (--esm-model, default 3B); ``dnabert`` embeds the reads
with random-weight DNABERT-S; ``predict`` runs the full VirNucPro pipeline
(chunk 300/500, both models, random classifier). Every rank's time, tokens,
sequences and GPU utilisation come from the run reports (all-gathered through
the process group: NCCL on GPUs, gloo on CPU). Speedup = baseline inference
time / this inference time, efficiency = speedup / world size; the same for wall time.
With --baseline and --json, a plot of speedup and efficiency vs GPUs goes beside the
JSON (same name, .png; benchmarks/plots.py, needs matplotlib). More world sizes in one
plot: ``python benchmarks/plots.py scaling run1.json run2.json run4.json -o scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # _formats: the tests' format writers
from _common import random_dna, table, write_fasta  # noqa: E402
from plots import plot_scaling  # noqa: E402

from virnucdist import EmbedConfig, PredictConfig, embed, predict  # noqa: E402
from virnucdist.launch import init_distributed  # noqa: E402
from virnucdist.models.esm2 import ESM2_ARCHS  # noqa: E402
from _formats import save_random_classifier  # noqa: E402  (tests/_formats.py)
from virnucdist.vnp.chunk import chunk_records  # noqa: E402
from virnucdist.vnp.translate import translate_records  # noqa: E402


def make_workload(work: Path, reads: int, length: int, chunk: int, name: str = "", dup: float = 0.0,
                  proteins: bool = True, esm_dim: int = 2560) -> dict[str, str]:
    recs = random_dna(reads, length, seed=length)
    if dup > 0:  # exact duplicates (PCR/optical, abundant organisms): a copy of an earlier read, spread at random
        rng = np.random.default_rng(7)
        copies = rng.choice(reads, size=int(dup * reads), replace=False)
        src = rng.integers(0, reads, size=len(copies))
        for c, o in zip(copies.tolist(), src.tolist()):
            recs[c] = (recs[c][0], recs[o][1])
    paths = {"reads": str(write_fasta(work / f"reads{name}.fa", recs)),
             "classifier": str(save_random_classifier(work / f"{chunk}_model.pth", seed=0, input_dim=768 + esm_dim))}
    if proteins:  # only the esm2 task reads them (translating 1M reads in Python takes a while)
        frames = translate_records(chunk_records(recs, chunk))
        paths["proteins"] = str(write_fasta(work / f"proteins{name}.fa", ((f.id, f.protein) for f in frames)))
    return paths


def run_task(task: str, paths: dict, work: Path, ws: int, args, ctx, tag: str = "") -> dict:
    out = str(work / f"{task}_ws{ws}{tag}")
    common = dict(random_init=True, overwrite=True, quiet=True, num_workers=args.workers, dedup=not args.no_dedup)
    dt = {"dtype": args.dtype} if args.dtype else {}
    if task == "esm2":
        rep = embed(EmbedConfig(inputs=(paths["proteins"],), model=args.esm_model, output_dir=out,
                                toks_per_batch=args.toks_per_batch, **dt, **common), ctx).report
    elif task == "dnabert":
        rep = embed(EmbedConfig(inputs=(paths["reads"],), model="dnabert-s", output_dir=out,
                                toks_per_batch=args.dna_toks, **common), ctx).report
    else:
        rep = predict(PredictConfig(inputs=(paths["reads"],), chunk_size=args.chunk_size,
                                    classifier=paths["classifier"], esm_model=args.esm_model,
                                    dnabert_model="dnabert-s", output_dir=out,
                                    toks_per_batch=args.toks_per_batch, **dt, **common), ctx).report
    return rep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="esm2,dnabert,predict")
    ap.add_argument("--reads", type=int, default=200000)
    ap.add_argument("--read-length", type=int, default=150)
    ap.add_argument("--chunk-size", type=int, default=300, choices=[300, 500])
    ap.add_argument("--esm-model", default="esm2_t36_3B_UR50D")
    ap.add_argument("--toks-per-batch", type=int, default=None)
    ap.add_argument("--dna-toks", type=int, default=262144)
    ap.add_argument("--workers", type=int, default=None, help="loader workers per rank (default: the library's, "
                                                                   "from the CPUs per local rank)")
    ap.add_argument("--dtype", default=None, help="ESM-2 dtype for esm2/predict (bf16, fp8...; default: the library's)")
    ap.add_argument("--workdir", default=None, help="shared directory (default: a temp dir on rank 0's node)")
    ap.add_argument("--warmup-reads", type=int, default=2000,
                    help="run every task on this many reads first, untimed (JIT/compile caches, NCCL); 0: none")
    ap.add_argument("--dup-fraction", type=float, default=0.0,
                    help="fraction of reads that are exact copies of another read (dedup benchmark)")
    ap.add_argument("--no-dedup", action="store_true", help="compute duplicates again (virnucdist --no-dedup)")
    ap.add_argument("--baseline", default=None, help="JSON of an earlier (1-rank) run")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    ctx = init_distributed()
    ws = ctx.world_size
    work = Path(ctx.broadcast_object(args.workdir or (tempfile.mkdtemp(prefix="vnd-scaling-") if ctx.is_main else None)))
    need_proteins = "esm2" in args.tasks.split(",")
    paths = make_workload(work, args.reads, args.read_length, args.chunk_size, dup=args.dup_fraction,
                          proteins=need_proteins, esm_dim=ESM2_ARCHS[args.esm_model][1]) if ctx.is_main else None
    paths = ctx.broadcast_object(paths)
    baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    base = baseline["tasks"] if baseline else {}
    results = {"world_size": ws, "reads": args.reads, "read_length": args.read_length,
               "dup_fraction": args.dup_fraction, "dedup": not args.no_dedup,
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "tasks": {}}
    if args.warmup_reads:
        warm = make_workload(work, args.warmup_reads, args.read_length, args.chunk_size, "_warmup",
                             proteins=need_proteins, esm_dim=ESM2_ARCHS[args.esm_model][1]) if ctx.is_main else None
        warm = ctx.broadcast_object(warm)
        for task in args.tasks.split(","):
            run_task(task, warm, work, ws, args, ctx, tag="_warmup")
    for task in args.tasks.split(","):
        rep = run_task(task, paths, work, ws, args, ctx)
        if not ctx.is_main:
            continue
        ranks, summ = rep["ranks"], rep["summary"]
        inf = max(r["phases"]["inference"] for r in ranks)
        entry = {"inference_s": inf, "wall_s": summ["wall_s"], "tokens": summ["tokens"],
                 "sequences": summ["sequences"], "tokens_per_s": summ["tokens"] / inf,
                 "token_imbalance": summ["token_imbalance"], "time_spread": summ["inference_time_spread"],
                 "phases_rank0": ranks[0]["phases"], "ranks": ranks, "dedup": rep.get("dedup"),
                 "finalize_s": ranks[0]["phases"].get("finalize", 0.0), "start_s": summ.get("start_s"),
                 "launch_to_run_s": ranks[0].get("launch_to_run_s")}
        if task in base:
            entry["speedup"] = base[task]["inference_s"] / inf
            entry["efficiency"] = entry["speedup"] / ws
            entry["wall_speedup"] = base[task]["wall_s"] / summ["wall_s"]
        results["tasks"][task] = entry
        rows = [{"rank": r["rank"], "dev": r["device"], "seqs": r["sequences"], "toks": r["tokens"],
                 "t": r["phases"]["inference"], "tps": r["tokens"] / max(r["phases"]["inference"], 1e-9),
                 "util": r["gpu_util_mean"], "umin": r["gpu_util_min"]} for r in ranks]
        print(f"\n== {task}: world size {ws}, {summ['sequences']} sequences, {summ['tokens']} tokens")
        print(table(rows, [("rank", "rank", "d"), ("dev", "device", "s"), ("seqs", "sequences", "d"),
                           ("toks", "tokens", "d"), ("t", "infer s", ".2f"), ("tps", "tokens/s", ",.0f"),
                           ("util", "gpu util %", ".0f"), ("umin", "min util %", ".0f")]))
        print(f"token imbalance {summ['token_imbalance']:.3%}, inference time spread {summ['inference_time_spread']:.2%}, "
              f"total {entry['tokens_per_s']:,.0f} tokens/s, wall {summ['wall_s']:.1f} s, run start -> first forward "
              f"{(entry['start_s'] or 0) - (entry['launch_to_run_s'] or 0):.1f} s (process launch -> first forward "
              f"{entry['start_s'] or 0:.1f} s, this process also made the workload), phases (rank 0): "
              + ", ".join(f"{k} {v:.2f}s" for k, v in ranks[0]["phases"].items()))
        if "speedup" in entry:
            print(f"speedup vs baseline: {entry['speedup']:.2f}x inference ({entry['efficiency']:.1%} efficiency), "
                  f"{entry['wall_speedup']:.2f}x wall")
    if ctx.is_main and args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
        try:  # speedup and efficiency vs GPUs beside the JSON (needs the baseline: two world sizes)
            png = plot_scaling([baseline, results] if baseline else [results], Path(args.json).with_suffix(".png"))
            print(f"wrote {png}" if png else "no scaling plot: give --baseline (another world size) for one")
        except ImportError:
            print('no scaling plot: matplotlib is not installed (pip install -e ".[report]")')
    ctx.shutdown()


if __name__ == "__main__":
    main()
