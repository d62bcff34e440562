"""``virnucdist train`` on 200,000 sliding windows with ESM-2 650M (random weights): how long, and where.

    python benchmarks/train.py                                  # one GPU: 200k windows, 650M, + predict baseline
    torchrun --nproc_per_node=8 benchmarks/train.py             # the same on 8 GPUs
    python benchmarks/train.py --smoke                          # CPU, tiny models, seconds

Input: two synthetic classes of 'genomes' made of stop-free codons with GC-leaning vs AT-leaning
codon usage (like coding sequence, each 150-bp window keeps at least one frame), sized so that
``--window 150 --step 50`` cuts ``--windows`` windows. Prints the run's phases from run_report.json
(embedding = inference, training = finalize), tokens/s, frames, epochs and seconds per epoch, and
held-out metrics; then, as the same-run baseline, ``predict`` over the same windows (each window a
read, ``--chunk-size 150``, a random classifier of the same width): the embedding cost alone, so
train - predict is what training adds. ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from virnucdist.tasks.predict import PredictConfig, predict
from virnucdist.tasks.train import TrainConfig, train
from virnucdist.vnp.chunk import window_spans
from virnucdist.vnp.translate import CODON_TABLE

SENSE = sorted(c for c, aa in CODON_TABLE.items() if aa != "*")
GC = np.array([sum(ch in "GC" for ch in c) for c in SENSE], dtype=np.float64)


def genomes(n: int, length: int, bias: float, prefix: str, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    p = np.exp(bias * GC)
    p /= p.sum()
    codons = np.array(SENSE)
    return [(f"{prefix}{i:06d}", "".join(codons[rng.choice(len(SENSE), size=length // 3, p=p)])) for i in range(n)]


def _write(path: Path, records) -> Path:
    """Rank 0 writes (atomically); the other ranks wait for the file."""
    if int(os.environ.get("RANK", "0")) == 0:
        if not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w") as f:
                for rid, seq in records:
                    f.write(f">{rid}\n{seq}\n")
            tmp.replace(path)
    else:
        while not path.exists():
            time.sleep(0.2)
    return path


def _phases(out: Path) -> dict:
    rep = json.loads((out / "run_report.json").read_text())
    ranks = rep["ranks"]
    ph = lambda k: max((r.get("phases") or {}).get(k, 0.0) for r in ranks)  # noqa: E731
    return {"wall_s": rep["summary"]["wall_s"], "model_load_s": ph("model_load"), "embed_s": ph("inference"),
            "finalize_s": ph("finalize"), "tokens": rep["summary"]["tokens"],
            "embed_tokens_per_s": rep["summary"]["tokens"] / max(ph("inference"), 1e-9),
            "world_size": rep["world_size"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=200_000)
    ap.add_argument("--window", type=int, default=150)
    ap.add_argument("--step", type=int, default=50)
    ap.add_argument("--genome-length", type=int, default=5000)
    ap.add_argument("--esm-model", default="esm2_t33_650M_UR50D")
    ap.add_argument("--dnabert-model", default="dnabert-s")
    ap.add_argument("--max-epochs", type=int, default=20, help="cap on epochs (early stopping may end sooner)")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--no-baseline", action="store_true", help="skip the predict baseline")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true", help="CPU: tiny random models, a few hundred windows")
    args = ap.parse_args()
    if args.smoke:
        args.windows, args.genome_length, args.max_epochs = min(args.windows, 120), 600, 3
        args.esm_model, args.dnabert_model = "esm2_t6_8M_UR50D", "dnabert-s-tiny"
        torch.set_num_threads(1)
    work = Path(args.workdir or os.environ.get("VND_BENCH_DIR") or tempfile.gettempdir()) / "vnd-train-bench"
    work.mkdir(parents=True, exist_ok=True)
    per_genome = len(window_spans(args.genome_length, args.window, args.step))
    n_each = -(-args.windows // (2 * per_genome))
    viral = _write(work / f"viral_{n_each}x{args.genome_length}.fa", genomes(n_each, args.genome_length, 0.5, "vir", 1))
    other = _write(work / f"other_{n_each}x{args.genome_length}.fa", genomes(n_each, args.genome_length, -0.5, "oth", 2))
    windows = 2 * n_each * per_genome
    device = "cpu" if args.smoke else None
    common = dict(esm_model=args.esm_model, dnabert_model=args.dnabert_model, random_init=True, dtype=args.dtype,
                  device=device, overwrite=True, quiet=args.smoke,  # progress (per epoch too) on a GPU run
                  **({"num_workers": 0} if args.smoke else {}))  # else the library's default (sized from the CPUs)
    t0 = time.perf_counter()
    res = train(TrainConfig(viral=(str(viral),), other=(str(other),), window=args.window, step=args.step,
                            output_dir=str(work / "train"), max_epochs=args.max_epochs, **common))
    train_wall = time.perf_counter() - t0
    main_rank = int(os.environ.get("RANK", "0")) == 0
    figures: dict = {}
    if main_rank:
        m = json.loads((work / "train" / "metrics.json").read_text())
        ph = _phases(work / "train")
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu"
        figures = {"device": gpu, "windows": windows, "genomes": 2 * n_each, "esm_model": args.esm_model,
                   "frames": m["frames"], "epochs_run": m["epochs_run"], "best_epoch": m["best_epoch"],
                   "train": {**ph, "call_wall_s": train_wall,
                             "s_per_epoch": ph["finalize_s"] / max(m["epochs_run"], 1)},
                   "held_out": {k: m[k] for k in ("accuracy", "f1", "auroc")}}
        print(f"train: {windows:,} windows ({2 * n_each:,} genomes of {args.genome_length:,} bp, --window "
              f"{args.window} --step {args.step}) -> {m['frames']:,} frames, {args.esm_model} + {args.dnabert_model} "
              f"(random weights) on {gpu} x{ph['world_size']}")
        print(f"  wall {ph['wall_s']:.1f} s: model load {ph['model_load_s']:.1f} s, embedding {ph['embed_s']:.1f} s "
              f"({ph['embed_tokens_per_s']:,.0f} tokens/s, both models), training {ph['finalize_s']:.1f} s "
              f"({m['epochs_run']} epochs, {figures['train']['s_per_epoch']:.2f} s/epoch)")
        print(f"  held out: accuracy {m['accuracy']:.4f}, f1 {m['f1']:.4f}, auroc {m['auroc']}", flush=True)
        if args.json:  # now: a time limit during the baseline keeps the training figures
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    if not args.no_baseline:
        reads = _write(work / f"windows_{windows}.fa", ((f"{rid}_w{k}", seq[a:b])
                                                       for path in (viral, other) for rid, seq in _read(path)
                                                       for k, (a, b) in enumerate(window_spans(len(seq), args.window,
                                                                                               args.step))))
        t0 = time.perf_counter()
        predict(PredictConfig(inputs=(str(reads),), chunk_size=args.window, output_dir=str(work / "predict"),
                              **common))
        pred_wall = time.perf_counter() - t0
        if main_rank:
            ph = _phases(work / "predict")
            figures["baseline_predict"] = {**ph, "call_wall_s": pred_wall}
            print(f"baseline predict (same windows as reads, --chunk-size {args.window}): wall {ph['wall_s']:.1f} s, "
                  f"embedding+scoring {ph['embed_s']:.1f} s ({ph['embed_tokens_per_s']:,.0f} tokens/s), finalize "
                  f"{ph['finalize_s']:.1f} s; train - predict wall = "
                  f"{figures['train']['wall_s'] - ph['wall_s']:+.1f} s")
    if main_rank and args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


def _read(path: Path):
    rid, seq = None, []
    with open(path) as f:
        for line in f:
            if line.startswith(">"):
                if rid is not None:
                    yield rid, "".join(seq)
                rid, seq = line[1:].strip(), []
            else:
                seq.append(line.strip())
    if rid is not None:
        yield rid, "".join(seq)


if __name__ == "__main__":
    main()
    sys.exit(0)
