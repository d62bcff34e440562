"""Time the shard writer and finalize of embeddings.h5 (no GPU: synthetic float32 vectors).

    python benchmarks/finalize.py [--records 1000000] [--dim 2560] [--dir /tmp] [--json out.json] [--no-fsync]

Writes N x D float32 through :class:`virnucdist.writers.ShardWriter` in windows of
``--window`` records whose parts arrive shuffled (as packed batches do), from 1 "rank" and from
2 "ranks" (contiguous halves of the input, one shard each), then times
:func:`virnucdist.writers.finalize_embeddings` on each (records/s, GB/s, fsync of the output
included), and the same finalize with ``--dup`` (default 30%) of the records duplicates of an
earlier one (``source``; uniform over the earlier records: a pessimistic stash). The fsync cost
is the 1-rank write timed with and without fsync; ``--no-fsync`` turns fsync off everywhere.

The shards just written are in the page cache, so finalize reads from memory; the output is
fsync'd, so its write reaches the disk. Needs about 4 x N x D x 4 bytes of free disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from virnucdist import writers
from virnucdist.writers import Column, Part, ShardSchema, ShardWriter, finalize_embeddings, iter_embeddings


def write_shards(d: Path, ranges: list[tuple[int, int]], dim: int, window: int, part: int, flush_every: int,
                 base: np.ndarray) -> float:
    """Each (start, stop) range written by one writer (a rank); returns seconds."""
    schema = ShardSchema("embed", (Column("embedding", "f4", (dim,)),), attrs={"model": "synthetic"})
    rng = np.random.default_rng(0)
    os.sync()  # start with no dirty pages of an earlier step: each step pays for its own writes
    t = time.perf_counter()
    for rank, (a, b) in enumerate(ranges):
        w = ShardWriter(d, rank, schema, flush_every=flush_every, fingerprint="bench")
        for s in range(a, b, window):
            rows = np.arange(s, min(b, s + window))
            order = rng.permutation(len(rows))  # packing order: parts arrive shuffled
            parts = []
            for slots in np.array_split(order, max(1, len(rows) // part)):
                v = base[:len(slots)].copy()  # a fresh host buffer per batch, as a device->host copy gives
                v[:, 0] = rows[slots]  # record-specific: checked after finalize
                parts.append(Part(slots, {"embedding": v}))
            w.write(rows, parts)
        w.close()
    return time.perf_counter() - t


def timed_finalize(d: Path, out: Path, n: int, rows, source=None) -> float:
    ids = [f"seq_{i:07d}" for i in range(n)]
    os.sync()
    t = time.perf_counter()
    assert finalize_embeddings(d, out, ids, rows, source, {"model": "synthetic"}, fingerprint="bench") == len(rows)
    return time.perf_counter() - t


def check(out: Path, source: np.ndarray) -> None:
    a = 0
    for _, e in iter_embeddings(out, block=65536):
        np.testing.assert_array_equal(e[:, 0], source[a:a + len(e)].astype(np.float32))
        a += len(e)
    assert a == len(source)


def peak_stash(source: np.ndarray, window: int) -> int:
    """Most sources held at once between their first and last use in different windows."""
    uniq, first = np.unique(source, return_index=True)
    last = len(source) - 1 - np.unique(source[::-1], return_index=True)[1]
    span = (first // window) != (last // window)
    delta = np.zeros(len(source) // window + 2, dtype=np.int64)
    np.add.at(delta, first[span] // window, 1)
    np.add.at(delta, last[span] // window, -1)
    return int(np.cumsum(delta).max()) if span.any() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=2560)
    ap.add_argument("--window", type=int, default=4096, help="records per window handed to the writer")
    ap.add_argument("--part", type=int, default=512, help="records per part (packed batch)")
    ap.add_argument("--flush-every", type=int, default=4096)
    ap.add_argument("--dup", type=float, default=0.3, help="fraction of duplicate records in the dedup run")
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-fsync", action="store_true")
    args = ap.parse_args()
    n, dim = args.records, args.dim
    gb = n * dim * 4 / 1e9
    base = np.random.default_rng(1).standard_normal((args.part * 2, dim)).astype(np.float32)
    root = Path(tempfile.mkdtemp(prefix="vnd-finalize-", dir=args.dir))
    res: dict = {"records": n, "dim": dim, "gb": gb, "window": args.window, "flush_every": args.flush_every,
                 "fsync": not args.no_fsync}
    rows = np.arange(n)
    try:
        # the fsync cost: the same 1-rank write without and with fsync, twice each (the best of two)
        for rep in range(2):
            for fsync in (False, True):
                writers.durable._FSYNC = fsync
                key = "write_1rank_s" if fsync else "write_1rank_nofsync_s"
                s = write_shards(root / "one", [(0, n)], dim, args.window, args.part, args.flush_every, base)
                res[key] = min(s, res.get(key, s))
                shutil.rmtree(root / "one")
        writers.durable._FSYNC = not args.no_fsync
        write_shards(root / "one", [(0, n)], dim, args.window, args.part, args.flush_every, base)
        res["write_2rank_s"] = write_shards(root / "two", [(0, n // 2), (n // 2, n)], dim, args.window, args.part,
                                            args.flush_every, base)
        res["finalize_1rank_s"] = timed_finalize(root / "one", root / "e1.h5", n, rows)
        check(root / "e1.h5", rows)
        (root / "e1.h5").unlink()
        res["finalize_2rank_s"] = timed_finalize(root / "two", root / "e2.h5", n, rows)
        check(root / "e2.h5", rows)
        (root / "e2.h5").unlink()
        rng = np.random.default_rng(2)
        source = rows.copy()
        dup = np.sort(rng.choice(np.arange(1, n), int(args.dup * n), replace=False))
        source[dup] = (rng.random(len(dup)) * dup).astype(np.int64)
        source = source[source]  # a duplicate's source is a record that is its own source
        while (source[source] != source).any():
            source = source[source]
        res["finalize_dup_s"] = timed_finalize(root / "one", root / "e3.h5", n, rows, source)
        check(root / "e3.h5", source)
        window = max(1, min(65536, (256 << 20) // (dim * 4 + 8)))
        res["dup_peak_stash_mb"] = peak_stash(source, window) * dim * 4 / 1e6
    finally:
        shutil.rmtree(root, ignore_errors=True)
    commits = -(-n // args.flush_every)
    res["fsync_cost_s"] = res["write_1rank_s"] - res["write_1rank_nofsync_s"]
    lines = [f"finalize benchmark: {n:,} x {dim} float32 = {gb:.2f} GB, window {args.window}, "
             f"flush every {args.flush_every} ({commits} commits/rank), fsync {'on' if res['fsync'] else 'OFF'}",
             f"{'step':34s} {'seconds':>9s} {'records/s':>12s} {'GB/s':>7s}"]
    for key, label in (("write_1rank_nofsync_s", "write shards, 1 rank, no fsync"),
                       ("write_1rank_s", "write shards, 1 rank"), ("write_2rank_s", "write shards, 2 ranks"),
                       ("finalize_1rank_s", "finalize, 1 shard"), ("finalize_2rank_s", "finalize, 2 shards"),
                       ("finalize_dup_s", f"finalize, {args.dup:.0%} duplicates")):
        s = res[key]
        res[key.replace("_s", "_records_per_s")] = n / s
        res[key.replace("_s", "_gb_per_s")] = gb / s
        lines.append(f"{label:34s} {s:9.2f} {n / s:12,.0f} {gb / s:7.2f}")
    lines.append(f"fsync cost of the 1-rank write: {res['fsync_cost_s']:.2f} s "
                 f"({100 * res['fsync_cost_s'] / res['write_1rank_s']:.1f}% of it, "
                 f"{res['fsync_cost_s'] / gb:.2f} s/GB); dedup stash peak {res['dup_peak_stash_mb']:.0f} MB")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
