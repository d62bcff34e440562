"""How often does predict's call change with precision? fp32 (VirNucPro decides in fp32) vs bf16 vs fp8.

    python benchmarks/predict_fidelity.py --reads 5000 --dtypes fp32,bf16,fp8 --json out.json

Random 150-bp reads, random weights for ESM-2 3B, DNABERT-S and the classifier (same seed for every
dtype, so the only difference is precision). Prints, per dtype against fp32: the fraction of frames
whose label (virus/others) differs, the fraction of reads whose call differs (read_summary.tsv), and
the largest score difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import random_dna, write_fasta  # noqa: E402

from virnucdist import PredictConfig, predict  # noqa: E402
from virnucdist.vnp.consensus import read_predictions  # noqa: E402


def _read_calls(out: Path) -> dict[str, str]:
    lines = (out / "read_summary.tsv").read_text().splitlines()[1:]
    return {ln.split("\t")[0]: ln.split("\t")[4] for ln in lines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reads", type=int, default=5000)
    ap.add_argument("--read-length", type=int, default=150)
    ap.add_argument("--dtypes", default="fp32,bf16,fp8")
    ap.add_argument("--esm-model", default="esm2_t36_3B_UR50D")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vnd-fidelity-"))
    reads = write_fasta(work / "reads.fa", random_dna(args.reads, args.read_length, seed=11))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    frames, calls, secs = {}, {}, {}
    for dt in args.dtypes.split(","):
        out = work / dt
        t0 = time.perf_counter()
        predict(PredictConfig(inputs=(str(reads),), chunk_size=300, esm_model=args.esm_model,
                              dnabert_model="dnabert-s", output_dir=str(out), random_init=True, seed=0, dtype=dt,
                              overwrite=True, quiet=True))
        secs[dt] = time.perf_counter() - t0
        frames[dt] = {r.seq_id: r for r in read_predictions(out / "prediction_results.txt")}
        calls[dt] = _read_calls(out)
    ref = args.dtypes.split(",")[0]
    rows = []
    for dt in args.dtypes.split(",")[1:]:
        ids = list(frames[ref])
        a = np.array([[frames[ref][i].score1, frames[ref][i].score2] for i in ids])
        b = np.array([[frames[dt][i].score1, frames[dt][i].score2] for i in ids])
        frame_diff = float(np.mean([frames[ref][i].prediction != frames[dt][i].prediction for i in ids]))
        read_diff = float(np.mean([calls[ref][r] != calls[dt][r] for r in calls[ref]]))
        rows.append({"dtype": dt, "vs": ref, "frames": len(ids), "reads": len(calls[ref]),
                     "frame_label_differs": frame_diff, "read_call_differs": read_diff,
                     "max_abs_score_diff": float(np.abs(a - b).max()), "mean_abs_score_diff": float(np.abs(a - b).mean()),
                     "seconds": secs[dt]})
        print(f"[{device}] {dt} vs {ref}: {len(ids)} frames, {len(calls[ref])} reads: frame labels differ "
              f"{frame_diff:.4%}, read calls differ {read_diff:.4%}, max |score diff| {rows[-1]['max_abs_score_diff']:.2e}"
              f", {secs[dt]:.0f} s (fp32 run {secs[ref]:.0f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "reads": args.reads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
