"""DNABERT-S tokenisation rate of one loader worker (one process, one tokenizer thread), old vs new path.

    python benchmarks/tokenize_dna.py --reads 20000            # CPU: tokens/s per worker
    python benchmarks/tokenize_dna.py --smoke

Random reads (--length, default 150 bp). Rows: the Hugging Face ``encode_batch`` (offsets computed: the
library's path before issue 24) and the library's ``DnaBertSTokenizer.encode_batch`` (``encode_batch_fast``,
no offsets; ids checked equal). Workers needed for a GPU rate R tokens/s = R / (tokens/s per worker).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # as in a DataLoader worker
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from _common import random_dna  # noqa: E402

from virnucdist.models.tokenization import DnaBertSTokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reads", type=int, default=20000)
    ap.add_argument("--length", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--target", type=float, default=1.8e6, help="GPU tokens/s to feed (workers needed)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.reads, args.repeats = 500, 1
    tok = DnaBertSTokenizer()
    seqs = [s for _, s in random_dna(args.reads, args.length, seed=3)]
    hf = tok.tokenizer
    rows = {"HF encode_batch (old path)": lambda: [np.asarray(e.ids, dtype=np.int64) for e in
                                                   hf.encode_batch([s.upper() for s in seqs])],
            "library encode_batch (new)": lambda: tok.encode_batch(seqs)}
    outs = {}
    for name, fn in rows.items():
        fn()
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            outs[name] = fn()
            best = min(best, time.perf_counter() - t0)
        toks = sum(map(len, outs[name]))
        print(f"{name:28s}: {toks / best:>11,.0f} tokens/s per worker, {args.reads / best:>9,.0f} reads/s; "
              f"workers for {args.target / 1e6:.1f}M tokens/s: {args.target / (toks / best):.1f}", flush=True)
    a, b = outs.values()
    assert all(np.array_equal(x, y) for x, y in zip(a, b)), "ids differ"
    print(f"ids identical on {args.reads} reads; cpu: {os.cpu_count()} cores visible, affinity "
          f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}")


if __name__ == "__main__":
    main()
