"""Scanning inputs in parallel: several files at once, and byte ranges of one large plain file.

A plain FASTA or FASTQ file of at least ``2 * MIN_RANGE`` bytes is cut into up to ``workers``
byte ranges at record starts (FASTA: a line starting with ``>``; FASTQ: a line starting with
``@`` whose next-but-one line starts with ``+``, which a quality line never satisfies in a
well-formed file). Each range is scanned by the same scanner as a whole file, in a worker
process, its columns written to its own spool (:mod:`virnucdist.data.spool`); the worker returns
only the spool's description. The file's scan is its ranges' spools with each range's first byte
and line (added as :mod:`virnucdist.data.build` streams them into the index), the letter counts
summed; the parent hashes the whole file (the fingerprint) in a thread meanwhile. Gzip, BAM,
CR-only and small files are scanned whole, several files at once.

The result is the serial scan's, byte for byte (tested). Any error in a range (a malformed
record) makes that file scanned again serially, so the message (file, line, what) is exactly
the serial one.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import numpy as np

from .fasta import FastaError
from .spool import Spool
from .scan import BLOCK_SIZE, Blocks, _FileScan, _scan_fasta_file, cr_only, detect_format

__all__ = ["MIN_RANGE", "default_workers", "cut_points"]

MIN_RANGE = 64 << 20


def default_workers() -> int:
    """The CPUs this process may use, at most 16 (10M reads on a 16-CPU H100 host, 2026-12-07: 1 worker
    33.9 s, 8 workers 8.7 s, 16 workers 6.2 s; past 16 the parent's serial stitching dominates)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:           # pragma: no cover (not Linux)
        n = os.cpu_count() or 1
    return max(1, min(16, n))


def cut_points(path: str, fmt: str, parts: int) -> list[int]:
    """Record starts near ``k * size / parts`` (k = 1 .. parts - 1), sorted, unique, inside the file."""
    size = os.path.getsize(path)
    cuts = []
    with open(path, "rb") as fh:
        for k in range(1, parts):
            pos = size * k // parts
            fh.seek(pos)
            buf = fh.read(1 << 20)
            cut = _record_start(buf, fmt)
            if cut is not None and pos + cut < size:
                cuts.append(pos + cut)
    return sorted(set(c for c in cuts if c > 0))


def _record_start(buf: bytes, fmt: str) -> int | None:
    """Offset in ``buf`` of the first record start after its first newline (None: not found)."""
    i = buf.find(b"\n")
    while 0 <= i < len(buf) - 1:
        start = i + 1
        if fmt == "fasta":
            if buf[start:start + 1] == b">":
                return start
        elif buf[start:start + 1] == b"@" and buf[buf.rfind(b"\n", 0, i) + 1:i].strip():   # not after a blank line
            a = buf.find(b"\n", start)
            b = buf.find(b"\n", a + 1) if a >= 0 else -1
            if b >= 0 and buf[b + 1:b + 2] == b"+":
                return start
            if b < 0:
                return None
        i = buf.find(b"\n", start)
    return None


class _Range:
    """``read(n)`` over ``[a, b)`` of a file; counts newlines (line numbers of later ranges)."""

    def __init__(self, path: str, a: int, b: int):
        self.fh = open(path, "rb", buffering=0)
        self.fh.seek(a)
        self.left = b - a
        self.newlines = 0

    def read(self, n: int) -> bytes:
        data = self.fh.read(min(n, self.left)) if self.left > 0 else b""
        self.left -= len(data)
        self.newlines += data.count(b"\n")
        return data

    def close(self):
        self.fh.close()


def _scan_range(path: str, fmt: str, a: int, b: int, block_size: int, spool_dir: str):
    from .fastq import _scan_fastq_file
    r = _Range(path, a, b)
    try:
        scan = (_scan_fastq_file if fmt == "fastq" else _scan_fasta_file)(Blocks(r), path, block_size,
                                                                         Spool(spool_dir))
    except FastaError:
        return None                   # the parent rescans the file serially: the serial message
    finally:
        r.close()
    return scan, r.newlines


def _whole(scan_one: Callable, path: str, spool_dir: str):
    try:
        return scan_one(path, None, spool_dir)
    except Exception:                  # noqa: BLE001 (raised again by the serial rescan, with its own type)
        return None


def _stitch(fmt: str, results: list, starts: list[int], digest: str, size: int) -> _FileScan:
    """One file's scan from its ranges' (spools shifted by the range's first byte and line)."""
    lines = np.cumsum([0] + [nl for _, nl in results[:-1]]).tolist()
    parts = [(s.parts[0][0], a, k) for (s, _), a, k in zip(results, starts, lines)]
    return _FileScan(fmt, parts, np.sum([s.counts for s, _ in results], axis=0), digest, size)


def _sha256(path: str, out: list) -> None:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(16 << 20):
            h.update(block)
    out.append(h.hexdigest())


def splittable(path: str, workers: int, min_range: int) -> tuple[str, list[int]] | None:
    """``(format, range starts)`` when ``path`` is a plain file worth scanning in ranges."""
    from .fasta import is_gzip
    if workers < 2 or is_gzip(path):
        return None
    size = os.path.getsize(path)
    if size < 2 * min_range:
        return None
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if cr_only(head):
        return None
    fmt = detect_format(path)
    cuts = cut_points(path, fmt, min(workers, size // min_range))
    return (fmt, [0] + cuts) if cuts else None


def scan_files(paths: list[str], scan_one: Callable, work: str, *, workers: int, block_size: int = BLOCK_SIZE,
               progress: Callable[[int], None] | None = None, min_range: int = MIN_RANGE) -> list:
    """``scan_one(path, progress, spool_dir)`` for each path (results in order), parallel over files and
    ranges; the scans' columns are written under ``work`` (a spool directory per file or range)."""
    def spool_dir(f: int, k: int | None = None) -> str:
        return os.path.join(work, f"f{f}" if k is None else f"f{f}-r{k}")

    plans = [splittable(p, workers, min_range) for p in paths] if workers >= 2 else [None] * len(paths)
    many = len(paths) > 1 and sum(os.path.getsize(p) for p in paths) >= 2 * min_range
    if workers < 2 or not (many or any(plans)):
        return [scan_one(p, progress, spool_dir(f)) for f, p in enumerate(paths)]
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    results: list = [None] * len(paths)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {}
        for f, (p, plan) in enumerate(zip(paths, plans)):
            if plan is None:
                futures[f] = pool.submit(_whole, scan_one, p, spool_dir(f))
            else:
                fmt, starts = plan
                ends = starts[1:] + [os.path.getsize(p)]
                futures[f] = [pool.submit(_scan_range, p, fmt, a, b, block_size, spool_dir(f, k))
                              for k, (a, b) in enumerate(zip(starts, ends))]
        shas = {}
        threads = []
        for f, plan in enumerate(plans):       # the fingerprint of split files, while the ranges are scanned
            if plan is not None:
                shas[f] = []
                t = threading.Thread(target=_sha256, args=(paths[f], shas[f]), daemon=True)
                t.start()
                threads.append(t)
        for f, fut in futures.items():
            if isinstance(fut, list):
                parts = [x.result() for x in fut]
                threads[list(shas).index(f)].join()
                if any(x is None for x in parts):
                    results[f] = scan_one(paths[f], None, spool_dir(f))       # the serial error message
                else:
                    fmt, starts = plans[f]
                    results[f] = (_stitch(fmt, parts, starts, shas[f][0], os.path.getsize(paths[f])), None, None)
            else:
                results[f] = fut.result() or scan_one(paths[f], None, spool_dir(f))   # None: rescan for the message
            if progress is not None:
                progress(results[f][0].size)
    return results
