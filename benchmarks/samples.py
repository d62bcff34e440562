"""One ``--samples`` launch against one launch per sample (predict, paired-end reads).

    python benchmarks/samples.py --esm-model esm2_t36_3B_UR50D --dnabert-model /path/DNABERT-S \\
        --classifier 300_model.pth [--samples 8] [--pairs 50000] [--length 150] [--nproc 1] [--json out.json]
    python benchmarks/samples.py --smoke      # CPU, tiny random models, 8 samples of 100 pairs: minutes on 2 cores
    # no weights on the machine: --random-init (ESM-2 3B and DNABERT-S of the real sizes, a random classifier;
    # model_load is then the random initialisation, not a checkpoint read: benchmarks/startup.py times that)
    python benchmarks/samples.py --random-init --esm-model esm2_t36_3B_UR50D --dnabert-model dnabert-s
    # in two device calls: --only one --json a.json, then --only each --json b.json; --merge a.json b.json

Writes ``--samples`` samples of ``--pairs`` synthetic read pairs (``--length`` bp, gzip R1/R2
FASTQ as Illumina writes them) and a sample sheet into ``--dir``, then times, on the same machine
and in the same call:

* one launch: ``torchrun --nproc_per_node=NPROC -m virnucdist.predict --samples SHEET``;
* the baseline: one such launch per sample (``predict R1 R2``), one after the other.

Each launch is timed from outside (wall), and its overhead is split with its run_report.json
(rank 0): ``process_start`` (launch to the run's start: interpreter, imports, torchrun and the
process group), ``index`` (``open_s``: run directory, index built, manifest), ``model_load``,
``inference`` and ``finalize`` (phases), the rest ``other`` (barriers, report, exit). Prints one
table per mode, the wall ratio (per-sample launches / one launch) and the per-sample outputs'
agreement (reads and virus calls per sample from samples.tsv vs each separate run's read_summary).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PHASES = ("process_start", "index", "model_load", "inference", "finalize", "other")


def write_sample(base: Path, seed: int, pairs: int, length: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    qual = "F" * length
    paths = (Path(f"{base}_R1.fastq.gz"), Path(f"{base}_R2.fastq.gz"))
    seqs = [letters[rng.integers(0, 4, (pairs, length))] for _ in range(2)]
    for m, p in enumerate(paths, 1):
        with gzip.open(p, "wt", compresslevel=1) as fh:
            for i in range(pairs):
                fh.write(f"@A00123:8:H7GJK:{seed}:1101:{i}:1000 {m}:N:0:ATCACG\n{seqs[m - 1][i].tobytes().decode()}\n"
                         f"+\n{qual}\n")
    return paths


def launch(args, predict_args: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "virnucdist.predict", *predict_args, *args.model_flags, "-o", str(out), "--quiet"]
    shutil.rmtree(out, ignore_errors=True)  # a fresh run every time (a finished one would be a no-op)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    wall = time.time() - t0
    if p.returncode != 0:
        sys.exit(f"launch failed ({' '.join(cmd)}):\n{p.stderr[-3000:]}")
    rep = json.loads((out / "run_report.json").read_text())
    r0 = next(r for r in rep["ranks"] if r["rank"] == 0)
    ph = r0["phases"]
    split = {"process_start": max(0.0, r0["started_unix"] - t0 - rep.get("open_s", 0.0)),
             "index": rep.get("open_s", 0.0) + ph.get("index", 0.0), "model_load": ph.get("model_load", 0.0),
             "inference": ph.get("inference", 0.0) + ph.get("write_flush", 0.0), "finalize": ph.get("finalize", 0.0)}
    split["other"] = max(0.0, wall - sum(split.values()))
    return {"wall": wall, **split, "reads": rep["records"]}


def calls(summary: Path) -> tuple[int, int]:
    lines = summary.read_text().splitlines()[1:]
    return len(lines), sum(ln.endswith("\tvirus") for ln in lines)


def report(one: dict | None, each: list | None, samples: int, agree) -> float | None:
    """Print the table (and the ratio when both modes ran)."""
    print(f"\n{'':28s}" + "".join(f"{p:>14s}" for p in ("wall", *PHASES)))
    if one:
        print(f"{'one --samples launch':28s}" + "".join(f"{one[p]:14.2f}" for p in ("wall", *PHASES)))
    if each:
        total = {k: sum(e[k] for e in each) for k in ("wall", *PHASES)}
        print(f"{f'{samples} launches (sum)':28s}" + "".join(f"{total[p]:14.2f}" for p in ("wall", *PHASES)))
        print(f"{'per launch (mean)':28s}" + "".join(f"{total[p] / len(each):14.2f}" for p in ("wall", *PHASES)))
    if not (one and each):
        return None
    ratio = total["wall"] / one["wall"]
    print(f"\nwall: one launch {one['wall']:.1f} s, {samples} launches {total['wall']:.1f} s: ratio {ratio:.2f}x"
          + ("" if agree is None else f"; per-sample counts agree: {agree}"))
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=50000)
    ap.add_argument("--length", type=int, default=150)
    ap.add_argument("--nproc", type=int, default=1, help="processes (GPUs) per launch")
    ap.add_argument("--esm-model")
    ap.add_argument("--dnabert-model")
    ap.add_argument("--classifier")
    ap.add_argument("--chunk-size", type=int, default=300)
    ap.add_argument("--extra", default="", help="more predict flags, e.g. '--dtype bf16 --toks-per-batch 65536'")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one, removed)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny random models, 100 pairs per sample")
    ap.add_argument("--random-init", action="store_true", help="random weights (no --classifier needed)")
    ap.add_argument("--only", choices=["one", "each"], default=None, help="time one mode (merge later with --merge)")
    ap.add_argument("--merge", nargs=2, metavar="JSON", help="print the table of two --only runs")
    args = ap.parse_args()
    if args.merge:
        a, b = (json.loads(Path(p).read_text()) for p in args.merge)
        one = a.get("one_launch") or b.get("one_launch")
        each = a.get("per_sample_launches") or b.get("per_sample_launches")
        report(one, each, a["samples"], None)
        return
    if args.smoke:
        args.pairs = min(args.pairs, 100)
        args.model_flags = ["--esm-model", "esm2_t6_8M_UR50D", "--dnabert-model", "dnabert-s-tiny", "--random-init",
                            "--device", "cpu", "--num-workers", "1"]
    else:
        if not (args.esm_model and args.dnabert_model and (args.classifier or args.random_init)):
            ap.error("--esm-model, --dnabert-model and --classifier (or --random-init) are required (or --smoke)")
        args.model_flags = ["--esm-model", args.esm_model, "--dnabert-model", args.dnabert_model,
                            *(["--classifier", args.classifier] if args.classifier else []),
                            *(["--random-init"] if args.random_init else [])]
    args.model_flags += ["--chunk-size", str(args.chunk_size), *args.extra.split()]
    work = Path(args.dir or tempfile.mkdtemp(prefix="vnd-samples-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    files = [write_sample(work / f"S{k + 1}", k + 1, args.pairs, args.length) for k in range(args.samples)]
    sheet = work / "sheet.tsv"
    sheet.write_text("sample\tR1\tR2\n" + "".join(f"S{k + 1}\t{a}\t{b}\n" for k, (a, b) in enumerate(files)))
    print(f"data: {args.samples} samples x {args.pairs} pairs x {args.length} bp in {time.perf_counter() - t:.1f} s "
          f"({work})", flush=True)
    def save(one, each, ratio=None, agree=None):  # after every launch: a timeout keeps what ran
        if args.json:
            Path(args.json).write_text(json.dumps({"samples": args.samples, "pairs": args.pairs, "length": args.length,
                                                   "nproc": args.nproc, "smoke": args.smoke, "one_launch": one,
                                                   "per_sample_launches": each, "ratio": ratio, "agree": agree},
                                                  indent=2))

    one = each = None
    if args.only != "each":
        one = launch(args, ["--samples", str(sheet)], work / "sheet_run")
        print(f"one --samples launch: {one['wall']:.1f} s", flush=True)
        save(one, each)
    if args.only != "one":
        each = []
        for k, (a, b) in enumerate(files):
            each.append(launch(args, [str(a), str(b)], work / f"single_S{k + 1}"))
            print(f"launch S{k + 1}: {each[-1]['wall']:.1f} s", flush=True)
            save(one, each)
    agree = None
    if one and each:
        table = (work / "sheet_run" / "samples.tsv").read_text().splitlines()[1:]
        agree = all(tuple(map(int, ln.split("\t")[1:4:2])) == calls(work / f"single_S{k + 1}" / "read_summary.tsv")
                    for k, ln in enumerate(table))
    ratio = report(one, each, args.samples, agree)
    save(one, each, ratio, agree)
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
