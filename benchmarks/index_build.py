"""The sequence index at scale: build time, peak RSS, size on disk, per-rank RSS after loading.

    python benchmarks/index_build.py --reads 1000000 [--length 150] [--ranks 8] [--formats plain gzip]
    python benchmarks/index_build.py --smoke          # seconds, for CI-like checks
    python benchmarks/index_build.py --reads 10000000 --formats plain --workers 1 8 16 --ranks 1   # scaling

Writes N synthetic reads with Illumina-style ids (``@A00123:8:H7GKLDSXY:1:1101:x:y``) as FASTA,
and its gzip (``gzip -1``), into a temp dir; for each format:

* ``build``: ``SequenceIndex.build`` + ``save`` in a fresh process: wall seconds, the peak RSS
  of that process (ru_maxrss) and of its largest child (a scan worker); with several ``--workers`` values,
  one build each and the ratio of wall times to the first (parallel scaling, same files, same run);
* ``disk``: the index directory's size (and bytes per read);
* ``load``: ``--ranks`` processes each load the saved index (memory-mapped) and work on their
  contiguous 1/ranks of the rows: RSS above the interpreter's own (numpy imported) after the
  load, after touching their share (every column row of it, ids decoded, the first
  ``--read-records`` sequences read), and after touching what the engine read whole on every rank
  before the plan (``length`` and ``representatives``: the partition and dedup inputs);
* ``plan``: the engine's planning (:mod:`virnucdist.engine.plan`): rank 0 in a fresh process loads
  the index, computes costs (predict's: length + 1), dedup and the partition over ``--ranks`` and
  writes every other rank's run (wall seconds, peak RSS); then ``--ranks`` - 1 processes each load
  the index and read their run, and touch their share of the index columns: RSS after planning.
  The same processes then plan the old way (costs, representatives, the partition of the whole
  index on every rank): the same-run baseline.

``--baseline-src DIR [DIR ...]`` (a checkout's ``src``: of the format-2 index, e.g. ``git worktree add
/tmp/old fb92f15``; or of an earlier format-3 build, e.g. d9198f2, the build before it was bounded in
memory) measures the same steps with that code on the same files in the same run: its build (format 2:
gzip decompressed into a copy), its index, and its load in ``--ranks`` processes.

Prints one line per figure plus the command, date and machine.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np


def write_reads(path: str, n: int, length: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    step = 200_000
    with open(path, "wb") as fh:
        for start in range(0, n, step):
            m = min(step, n - start)
            block = np.full((m, length + 1), ord("\n"), dtype=np.uint8)
            block[:, :length] = letters[rng.integers(0, 4, size=(m, length), dtype=np.uint8)]
            rows = block.tobytes()
            w = length + 1
            fh.write(b"".join(b">A00123:8:H7GKLDSXY:1:%d:%d:%d 1:N:0:ATCACG\n" % (1101 + (start + i) // 1_000_000,
                                                                                (start + i) % 1_000_000, 1000 + i % 977)
                              + rows[i * w:(i + 1) * w] for i in range(m)))


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _build(inp: str, out: str, workers: int | None, q) -> None:
    from virnucdist.data import SequenceIndex
    base = _rss_kb()
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    idx = SequenceIndex.build([inp], workers=workers, spool_dir=os.path.dirname(out))
    idx.save(out)
    q.put((time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, base, len(idx),
           resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, child))


def _planner(index_dir: str, plan_dir: str, ranks: int, q) -> None:
    from virnucdist.data import SequenceIndex
    from virnucdist.engine.plan import make_plan, write_shares
    base = _rss_kb()
    t = time.perf_counter()
    idx = SequenceIndex.load(index_dir)
    n = len(idx)
    length = np.asarray(idx.length)
    plan = make_plan(length + 1, np.asarray(idx.representatives(), dtype=np.int64), length == 0,
                     np.zeros(n, dtype=bool), ranks)
    write_shares(plan_dir, plan)
    q.put((time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, base))


def _planned_rank(index_dir: str, plan_dir: str, rank: int, ranks: int, q) -> None:
    from virnucdist.data import SequenceIndex
    from virnucdist.engine.plan import read_share
    from virnucdist.sharding import partition
    base = _rss_kb()
    idx = SequenceIndex.load(index_dir)
    share = read_share(plan_dir, rank)
    lo, hi = int(share.rows[0]), int(share.rows[-1]) + 1
    for col in ("file_idx", "offset", "nbytes", "length", "header_line"):   # what the workers read of the run
        np.asarray(getattr(idx, col)[lo:hi]).sum()
    planned = _rss_kb()
    n = len(idx)
    length = np.asarray(idx.length)                                         # the engine before the plan
    reps = np.asarray(idx.representatives(), dtype=np.int64)
    first = reps == np.arange(n)
    old = partition(length + 1, ranks, skip=~(first & (length > 0)))[rank]
    assert np.array_equal(old, share.rows)
    whole = _rss_kb()
    q.put((rank, (planned - base) / 1024, (whole - base) / 1024, len(share.rows)))


def _in_processes(ctx, target, arg_lists: list[tuple]) -> list:
    """``target(*args, q)`` in one fresh process per ``args``, all at once; what each puts on ``q``, sorted."""
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, q)) for a in arg_lists]
    for pr in procs:
        pr.start()
    rows = sorted(q.get() for _ in procs)
    for pr in procs:
        pr.join()
    return rows


def _plan_step(fmt: str, out: str, tmp: str, ranks: int, ctx) -> None:
    plan_dir = os.path.join(tmp, f"run-{fmt}")
    [(wall, maxrss_kb, base_kb)] = _in_processes(ctx, _planner, [(out, plan_dir, ranks)])
    print(f"[{fmt}] plan on rank 0 (load, costs, dedup, partition over {ranks}, runs written) {wall:6.2f} s   "
          f"peak RSS {maxrss_kb / 1024:8,.0f} MB ({(maxrss_kb - base_kb) / 1024:,.0f} MB above the interpreter)")
    rows = _in_processes(ctx, _planned_rank, [(out, plan_dir, r, ranks) for r in range(1, ranks)])
    planned = [r[1] for r in rows]
    whole = [r[2] for r in rows]
    print(f"[{fmt}] per-rank RSS after planning, ranks 1..{ranks - 1} (MB above the interpreter): own run read "
          f"max {max(planned):.1f} (mean {np.mean(planned):.1f}); baseline, every rank planning the whole "
          f"index: max {max(whole):.1f} (mean {np.mean(whole):.1f})")
    shutil.rmtree(plan_dir, ignore_errors=True)


def _rank(index_dir: str, rank: int, ranks: int, read_records: int, q) -> None:
    from virnucdist.data import SequenceIndex
    base = _rss_kb()
    idx = SequenceIndex.load(index_dir)
    after_load = _rss_kb()
    n = len(idx)
    lo, hi = n * rank // ranks, n * (rank + 1) // ranks
    for col in ("file_idx", "offset", "nbytes", "length", "header_line", "mate", "sample"):
        np.asarray(getattr(idx, col)[lo:hi]).sum()
    np.asarray(idx.content_hash[lo:hi]).sum()
    ids = idx.ids
    k = sum(len(ids[a:min(hi, a + 65536)]) for a in range(lo, hi, 65536))    # every id of the share decoded
    for i in range(lo, min(hi, lo + read_records)):
        idx.read(i)
    share = _rss_kb()
    (np.asarray(idx.length) == 0).sum()
    (np.asarray(idx.representatives()) == np.arange(n)).sum()
    whole = _rss_kb()
    q.put((rank, (after_load - base) / 1024, (share - base) / 1024, (whole - base) / 1024, k))


_BASELINE = r"""
import os, resource, sys, time, tempfile
import numpy as np
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
from virnucdist.data import SequenceIndex
mode, inp, out, tmp = sys.argv[1:5]
base = rss()
t = time.perf_counter()
if mode == "build":
    idx = SequenceIndex.build([inp], gzip_dir=tmp)
    idx.save(out)
    extra = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
    print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, base, len(idx), extra)
else:
    idx = SequenceIndex.load(out)
    n = len(idx); ids = idx.ids
    print((rss() - base) / 1024)
"""


def _baseline(src: str, fmt: str, inp: str, tmp: str, ranks: int) -> None:
    env = {**os.environ, "PYTHONPATH": src}
    out = os.path.join(tmp, f"old-{fmt}.npz")
    copy = os.path.join(tmp, f"old-copy-{fmt}")
    os.makedirs(copy, exist_ok=True)
    r = subprocess.run([sys.executable, "-c", _BASELINE, "build", inp, out, copy], env=env, check=True,
                       capture_output=True, text=True).stdout.split()
    wall, maxrss, base, n, extra = float(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4])
    what = "index.npz" if os.path.isfile(out) else "index directory"       # format 2, or an older format 3
    size = os.path.getsize(out) if os.path.isfile(out) else _dir_size(out)
    print(f"[{fmt}] baseline ({src}) build+save {wall:7.2f} s   peak RSS {maxrss / 1024:8,.0f} MB "
          f"({(maxrss - base) / 1024:,.0f} MB = {(maxrss - base) * 1024 / n:.1f} B/read above the interpreter); "
          f"{what} {size / 1e6:,.1f} MB + decompressed copy {extra / 1e6:,.1f} MB")
    procs = [subprocess.Popen([sys.executable, "-c", _BASELINE, "load", inp, out, copy], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(ranks)]
    loads = [float(p.communicate()[0].split()[0]) for p in procs]
    print(f"[{fmt}] baseline ({src}) per-rank RSS after load over {ranks} ranks: max {max(loads):,.1f} MB")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True) if os.path.isdir(out) else os.remove(out)


def _dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reads", type=int, default=1_000_000)
    ap.add_argument("--length", type=int, default=150)
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--read-records", type=int, default=20_000, help="sequences each rank reads from its share")
    ap.add_argument("--formats", nargs="+", default=["plain", "gzip"], choices=["plain", "gzip"])
    ap.add_argument("--workers", type=int, nargs="+", default=[None],
                    help="scan processes of the build (default: the CPUs, at most 8); several values: a build "
                         "with each, in this run, and the wall-time ratio to the first")
    ap.add_argument("--smoke", action="store_true", help="20,000 reads, 2 ranks")
    ap.add_argument("--tmp", default=None, help="where to write the reads (default: a temp dir)")
    ap.add_argument("--baseline-src", nargs="+", default=[], help="src/ of other checkouts (format 2, or an earlier "
                    "format 3): the build and load with each, on the same files in the same run")
    args = ap.parse_args()
    if args.smoke:
        args.reads, args.ranks, args.read_records = 20_000, 2, 1000
    ctx = mp.get_context("spawn")
    print(f"# {' '.join(sys.argv)}")
    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; {platform.node()}; "
          f"{os.cpu_count()} CPUs; {platform.processor() or platform.machine()}; python {platform.python_version()}")
    tmp = tempfile.mkdtemp(prefix="index-bench-", dir=args.tmp)
    try:
        fa = os.path.join(tmp, "reads.fa")
        t = time.perf_counter()
        write_reads(fa, args.reads, args.length)
        print(f"reads      {args.reads:,} x {args.length} bp: {os.path.getsize(fa) / 1e6:,.0f} MB FASTA "
              f"(written in {time.perf_counter() - t:.1f} s)")
        inputs = {"plain": fa}
        if "gzip" in args.formats:
            t = time.perf_counter()
            with open(fa + ".gz", "wb") as out:
                subprocess.run(["gzip", "-1", "-c", fa], stdout=out, check=True)
            inputs["gzip"] = fa + ".gz"
            print(f"gzip -1    {os.path.getsize(fa + '.gz') / 1e6:,.0f} MB ({time.perf_counter() - t:.1f} s)")
        for fmt in args.formats:
            out = os.path.join(tmp, f"index-{fmt}")
            walls = []
            for w in args.workers:
                shutil.rmtree(out, ignore_errors=True)
                [(wall, maxrss_kb, base_kb, n, child_kb, child0_kb)] = _in_processes(ctx, _build,
                                                                                     [(inputs[fmt], out, w)])
                walls.append(wall)
                above = (maxrss_kb - base_kb) * 1024
                print(f"[{fmt}] build+save, workers {w or 'default'}: {wall:7.2f} s   {n / wall:11,.0f} reads/s   "
                      f"peak RSS {maxrss_kb / 1024:8,.0f} MB ({above / 2**20:,.0f} MB = {above / n:.1f} B/read above "
                      f"the interpreter with its imports); largest child process {child_kb / 1024:,.0f} MB "
                      f"(a scan worker, forked: the interpreter's pages included; before the build "
                      f"{child0_kb / 1024:,.0f} MB)"
                      + (f"; {walls[0] / wall:.2f}x the first build ({args.workers[0] or 'default'} workers) "
                         f"of this run" if len(walls) > 1 else ""))
            size = _dir_size(out)
            print(f"[{fmt}] index on disk {size / 1e6:9,.1f} MB   {size / n:6.1f} B/read "
                  f"(beside the input; no decompressed copy)")
            rows = _in_processes(ctx, _rank, [(out, r, args.ranks, args.read_records) for r in range(args.ranks)])
            load = [r[1] for r in rows]
            share = [r[2] for r in rows]
            whole = [r[3] for r in rows]
            print(f"[{fmt}] per-rank RSS over {args.ranks} ranks (MB above the interpreter): after load "
                  f"max {max(load):.1f}; own share touched max {max(share):.1f} (mean {np.mean(share):.1f}); "
                  f"+ length & representatives whole max {max(whole):.1f}")
            if args.ranks > 1:
                _plan_step(fmt, out, tmp, args.ranks, ctx)
            shutil.rmtree(out, ignore_errors=True)
            for src in args.baseline_src:
                _baseline(src, fmt, inputs[fmt], tmp, args.ranks)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
