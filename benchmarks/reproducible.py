"""The cost of ``--reproducible``: tokens/s of ``virnucdist.embed`` with and without it, same data, same process.

    torchrun --standalone --nproc_per_node=1 benchmarks/reproducible.py --json reproducible.json
    torchrun --standalone --nproc_per_node=1 benchmarks/reproducible.py --smoke      # CPU, seconds

For each model (ESM-2, random weights unless --esm-model is a real .pt; DNABERT-S, random weights unless
--dnabert-model is a real directory) it embeds the same records three times: the default mode (the
baseline), ``--reproducible`` with the default --toks-per-batch, and ``--reproducible`` with a quarter of
it. It prints the inference tokens/s (run_report.json ``summary.tokens_per_s``) of each, the slowdown,
and whether the two reproducible runs wrote byte-identical embeddings.h5 (they must). ESM-2 proteins
are 100-400 aa; DNABERT-S reads are 150 and 500 bp.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import random_dna, random_proteins, write_fasta  # noqa: E402

from virnucdist import EmbedConfig, embed  # noqa: E402
from virnucdist.engine.config import DEFAULT_TOKS  # noqa: E402
from virnucdist.launch.dist import init_distributed  # noqa: E402


def _run(fasta: Path, out: Path, model: str, random_init: bool, ctx, **kw) -> dict:
    res = embed(EmbedConfig(inputs=(str(fasta),), model=model, output_dir=str(out), random_init=random_init,
                            quiet=True, **kw), ctx)
    rep = json.loads((out / "run_report.json").read_text()) if ctx.is_main else {}
    digest = hashlib.sha256(res.output.read_bytes()).hexdigest() if ctx.is_main else ""
    return {"tokens_per_s": rep.get("summary", {}).get("tokens_per_s"), "sha256": digest}


def bench(name: str, fasta: Path, model: str, random_init: bool, ctx, work: Path, toks: int) -> dict:
    rows = {
        "default": _run(fasta, work / f"{name}-default", model, random_init, ctx, toks_per_batch=toks),
        "reproducible": _run(fasta, work / f"{name}-repro", model, random_init, ctx, toks_per_batch=toks,
                             reproducible=True),
        "reproducible, budget/4": _run(fasta, work / f"{name}-repro-quarter", model, random_init, ctx,
                                       toks_per_batch=max(1, toks // 4), reproducible=True),
    }
    base = rows["default"]["tokens_per_s"] or 0.0
    for r in rows.values():
        r["vs_default"] = (r["tokens_per_s"] or 0.0) / base if base else None
    same = rows["reproducible"]["sha256"] == rows["reproducible, budget/4"]["sha256"]
    return {"model": model, "records": sum(1 for ln in fasta.read_text().splitlines() if ln.startswith(">")),
            "runs": rows, "reproducible_bytes_identical_across_budgets": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny models and inputs, CPU, seconds")
    ap.add_argument("--esm-model", default="esm2_t36_3B_UR50D", help="ESM-2 name (random weights) or a real .pt")
    ap.add_argument("--dnabert-model", default="dnabert-s", help="DNABERT-S directory (default: random weights)")
    ap.add_argument("--num-seqs", type=int, default=20000, help="ESM-2 proteins")
    ap.add_argument("--dna-reads", type=int, default=60000, help="DNABERT-S reads (half 150 bp, half 500 bp)")
    ap.add_argument("--which", default="esm2,dnabert")
    ap.add_argument("--json", default=None)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    device = "cpu" if args.smoke else None
    ctx = init_distributed(device)
    if args.smoke:
        args.esm_model, args.dnabert_model, args.num_seqs, args.dna_reads = ("esm2_t6_8M_UR50D", "dnabert-s-tiny",
                                                                              60, 80)
    toks = DEFAULT_TOKS[ctx.device.type]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vnd-repro-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {"device": torch_device_name(ctx.device), "world_size": ctx.world_size, "toks_per_batch": toks}
    which = args.which.split(",")
    if ctx.is_main:
        print(f"device {results['device']}, {ctx.world_size} rank(s), default --toks-per-batch {toks}", flush=True)
    if "dnabert" in which:  # the cheap one first: its figures are printed and saved before ESM-2 starts
        fasta = work / "reads.fa"
        if ctx.is_main:
            half = args.dna_reads // 2
            write_fasta(fasta, random_dna(half, 150, seed=2) + [(f"l{i}", s) for i, (_, s) in
                                                                  enumerate(random_dna(half, 500, seed=3))])
        ctx.barrier()
        random_init = not Path(args.dnabert_model).is_dir()
        results["dnabert"] = bench("dnabert", fasta, args.dnabert_model, random_init, ctx, work, toks)
        _report(results, "dnabert", args.json, ctx)
    if "esm2" in which:
        fasta = work / "proteins.fa"
        if ctx.is_main:
            write_fasta(fasta, random_proteins(args.num_seqs, 100, 400, seed=1))
        ctx.barrier()
        random_init = not args.esm_model.endswith(".pt")
        results["esm2"] = bench("esm2", fasta, args.esm_model, random_init, ctx, work, toks)
        _report(results, "esm2", args.json, ctx)
    ctx.shutdown()


def _report(results: dict, key: str, json_path: str | None, ctx) -> None:
    """Print one model's rows and (re)write the JSON with everything so far (rank 0)."""
    if not ctx.is_main:
        return
    r = results[key]
    print(f"{r['model']}: {r['records']} records; reproducible bytes identical across budgets: "
          f"{r['reproducible_bytes_identical_across_budgets']}")
    for mode, row in r["runs"].items():
        rate = row["tokens_per_s"] or 0.0
        vs = f"{row['vs_default']:.3f}x" if row["vs_default"] else "-"
        print(f"  {mode:24s} {rate:14,.0f} tokens/s  {vs} of default", flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2))


def torch_device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


if __name__ == "__main__":
    main()
