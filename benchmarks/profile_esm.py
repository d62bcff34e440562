"""torch.profiler view of packed ESM-2 forward passes on one GPU (where the time goes).

    python benchmarks/profile_esm.py --model esm2_t36_3B_UR50D --workload a --toks-per-batch 65536
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PROTEIN_WORKLOADS, random_proteins  # noqa: E402

from virnucdist.models.loading import load_model  # noqa: E402
from virnucdist.packing import TokenBudgetSampler, pack_token_arrays  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="esm2_t36_3B_UR50D")
    ap.add_argument("--workload", default="a")
    ap.add_argument("--toks-per-batch", type=int, default=65536)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--trace", default=None, help="write a chrome trace here")
    args = ap.parse_args()
    lm = load_model(args.model, device="cuda", dtype=torch.bfloat16, random_init=True)
    lo, hi = PROTEIN_WORKLOADS[args.workload]
    recs = random_proteins(20000, lo, hi, seed=1)
    toks = [lm.tokenizer.encode(s) for _, s in recs]
    sampler = TokenBudgetSampler(np.arange(len(toks)), np.array([len(t) for t in toks]), args.toks_per_batch)
    batches = [pack_token_arrays([toks[i] for i in b], b).pin_memory() for b in list(sampler)[: args.steps + 2]]
    with torch.inference_mode():
        for b in batches[:2]:  # warm-up (and compilation)
            lm.embed(b.to("cuda")).pooled[0]
        torch.cuda.synchronize()
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            for b in batches[2:]:
                lm.embed(b.to("cuda")).pooled[0]
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
    if args.trace:
        prof.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
