"""Time SequenceIndex build / save / load (and partition) on N synthetic reads.

    python benchmarks/index_build.py [--n 1000000] [--length 150] [--world-size 8]

Writes a FASTA of N reads (ids ``read_{i}``, one line each) to a temp dir and
prints seconds and records/s for each step.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from virnucdist.data import SequenceIndex
from virnucdist.sharding import partition, rank_costs


def write_reads(path: str, n: int, length: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    step = 100_000
    with open(path, "wb") as fh:
        for start in range(0, n, step):
            m = min(step, n - start)
            seqs = letters[rng.integers(0, 4, size=(m, length))]
            block = np.full((m, length + 1), ord("\n"), dtype=np.uint8)
            block[:, :length] = seqs
            rows = block.tobytes()
            w = length + 1
            fh.write(b"".join(b">read_%d\n" % (start + i) + rows[i * w:(i + 1) * w] for i in range(m)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--length", type=int, default=150)
    ap.add_argument("--world-size", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fa = os.path.join(tmp, "reads.fa")
        t = time.perf_counter()
        write_reads(fa, args.n, args.length)
        print(f"write      {time.perf_counter() - t:7.3f} s   ({os.path.getsize(fa) / 1e6:.0f} MB)")

        def step(name, fn):
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
            print(f"{name:<10} {dt:7.3f} s   {args.n / dt:12,.0f} records/s")
            return out

        index = step("build", lambda: SequenceIndex.build([fa]))
        assert len(index) == args.n
        cache = os.path.join(tmp, "index.npz")
        step("save", lambda: index.save(cache))
        loaded = step("load", lambda: SequenceIndex.load(cache, expected_fingerprint=index.fingerprint))
        step("ids", lambda: loaded.ids)
        assert loaded.ids[-1] == f"read_{args.n - 1}"
        parts = step("partition", lambda: partition(loaded.length + 2, args.world_size))
        loads = rank_costs(loaded.length + 2, parts)
        print(f"partition imbalance (max-min)/max over {args.world_size} ranks: "
              f"{(loads.max() - loads.min()) / loads.max():.2e}")
        rng = np.random.default_rng(1)
        picks = rng.integers(0, args.n, 10_000)
        t = time.perf_counter()
        for i in picks.tolist():
            loaded.read(i)
        dt = time.perf_counter() - t
        print(f"read       {dt / len(picks) * 1e6:7.1f} us per random record")


if __name__ == "__main__":
    main()
