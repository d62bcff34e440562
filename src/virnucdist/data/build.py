"""Building an index directory in bounded memory: the scans' spools streamed into the index's columns.

The scanners (in worker processes or not) write each file's, or each byte range's, columns to
spools (:mod:`virnucdist.data.spool`); :func:`write_columns` walks the rows in index order
(:class:`~virnucdist.data.inputs.PairLayout`: a file's rows as they are, or two files' rows
alternating) in slices of :data:`STEP` rows, and appends each slice to the ``.npy`` columns and
the id blob of the index directory (the files ``np.save`` would write, byte for byte). It keeps
two 8-byte numbers per row: the id's hash (for the duplicate check, :mod:`virnucdist.data.unique`)
and the first word of the content hash (for :func:`representatives`). The build's memory is
then about 25 bytes per record at its peak (the sorts), plus the scanners' blocks and slices
(about 130 MB).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
import weakref
import zlib
from typing import Callable

import numpy as np

from ..errors import UserError
from .bam import is_bam
from .bamindex import scan_bam_file
from .fasta import FastaError, is_gzip
from .fastq import _scan_fastq_file
from .gzseek import GzipCorrupt, GzipPoints, GzipScan
from .inputs import PairLayout, pair_layout, renamed
from .parallel import scan_files
from .scan import BLOCK_SIZE, Blocks, _FileScan, _scan_fasta_file, _warned_descriptions, cr_only, detect_format
from .spool import PROBE, NpyWriter, Spool, id_hashes
from .store import decode_ids, encode_ids, move_dir, write_extra, write_meta
from .unique import check_unique, mix_sample

__all__ = ["build_index", "write_columns", "representatives", "meta_of", "STEP", "IndexSpaceError"]


class IndexSpaceError(UserError):
    """The disk filled up while the index was written."""


STEP = 1 << 18        # rows per slice


def _interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty((2 * len(a), *a.shape[1:]), dtype=a.dtype)
    out[0::2], out[1::2] = a, b
    return out


_NUMERIC = (("offset", np.int64), ("nbytes", np.int64), ("length", np.int64), ("header_line", np.int64))


def write_columns(path: str, scans: list, layout: PairLayout) -> tuple[int, np.ndarray, np.ndarray]:
    """Write the row columns and ids of the index directory ``path`` (which exists) from ``scans``
    (:class:`~virnucdist.data.scan._FileScan` per file) in ``layout``'s order.

    Returns ``(rows, key hashes, first words of the content hashes)``: int64 and uint64 per row."""
    n = sum(len(scans[f]) * (2 if kind == "pair" else 1) for kind, f, _ in layout.segments)
    keys = np.empty(n, dtype=np.int64)
    h0 = np.empty(n, dtype=np.uint64)
    same_hash = hash(PROBE)
    w = {"file_idx": NpyWriter(os.path.join(path, "file_idx.npy"), np.int32)}
    for name, dt in _NUMERIC:
        w[name] = NpyWriter(os.path.join(path, f"{name}.npy"), dt)
    w["mate"] = NpyWriter(os.path.join(path, "mate.npy"), np.int8)
    w["sample"] = NpyWriter(os.path.join(path, "sample.npy"), np.int32)
    w["content_hash"] = NpyWriter(os.path.join(path, "content_hash.npy"), np.uint64, (2,))
    ids_off = NpyWriter(os.path.join(path, "ids_off.npy"), np.int64)
    ids_off.write(np.zeros(1, np.int64))
    blob_end = 0
    row = 0
    multi = len(layout.samples) > 1
    try:
        with open(os.path.join(path, "ids.bin"), "wb") as ids_fh:
            for kind, f, sample_no in layout.segments:
                scan = scans[f]
                pair = kind == "pair"
                for lo in range(0, len(scan), STEP):     # a pair: rows [lo, hi) of both files
                    hi = min(len(scan), lo + STEP)
                    m = (hi - lo) * (2 if pair else 1)
                    fidx = np.full(hi - lo, f, np.int32)
                    cols = {name: scan.read(name, lo, hi) for name, _ in _NUMERIC}
                    cols["content_hash"] = scan.read("content_hash", lo, hi)
                    if pair:
                        other = scans[f + 1]
                        cols = {k: _interleave(v, other.read(k, lo, hi)) for k, v in cols.items()}
                        fidx = _interleave(fidx, np.full(hi - lo, f + 1, np.int32))
                    blob, off = scan.read_ids(lo, hi)
                    if kind != "rows":
                        blob, off = encode_ids(renamed(kind, decode_ids(blob, off), lo & 1))
                    if kind == "rows" and all(sp.probe == same_hash for sp, _, _ in scan.parts):
                        kh = scan.read("idhash", lo, hi)          # hashed by the scanners (forked: same hash)
                    else:
                        kh = id_hashes(blob, np.diff(off))
                    w["file_idx"].write(fidx)
                    for name, col in cols.items():
                        w[name].write(col)
                    first = lo * (2 if pair else 1)
                    w["mate"].write(layout.mate(kind, f, first, first + m))
                    w["sample"].write(np.full(m, sample_no, np.int32))
                    ids_fh.write(blob)
                    ids_off.write(off[1:] + blob_end)
                    blob_end += len(blob)
                    keys[row:row + m] = mix_sample(kh, np.full(m, sample_no)) if multi else kh
                    h0[row:row + m] = cols["content_hash"][:, 0]
                    row += m
                for sc in scans[f:f + 2] if pair else [scan]:     # streamed: free their disk now
                    for sp, _, _ in sc.parts:
                        sp.remove(*sp.rows, "ids")
    finally:
        for wr in (*w.values(), ids_off):
            wr.close()
    return n, keys, h0


def _second_words(path: str) -> np.ndarray:
    """``content_hash[:, 1]`` of the ``.npy`` at ``path``, read in slices (nothing of the file stays mapped)."""
    with open(path, "rb") as fh:
        np.lib.format.read_magic(fh)
        shape, _, _ = np.lib.format.read_array_header_1_0(fh)
        out = np.empty(shape[0], dtype=np.uint64)
        for lo in range(0, shape[0], STEP):
            part = np.fromfile(fh, dtype="<u8", count=2 * min(STEP, shape[0] - lo))
            out[lo:lo + len(part) // 2] = part[1::2]
    return out


def representatives(h0: list, second: np.ndarray | str) -> np.ndarray:
    """int64 per row: the first row with the same content hash (see ``SequenceIndex.representatives``).

    ``h0``: a one-element list holding the first words of the hashes (taken from it: freed here). Sorted
    by that word (stable: rows in order); where neighbours share it, their second words (``second``, or
    read from the ``content_hash.npy`` at that path) are compared, and a run of equal first words holding other second words is
    sorted by them: the groups of equal 128-bit hashes, each represented by its lowest row. About 25
    bytes per row at the peak, whatever the share of repeated sequences."""
    words = h0.pop()
    n = len(words)
    order = np.argsort(words, kind="stable")
    words = words[order]
    same = words[1:] == words[:-1]            # sorted position k + 1 is in k's group
    del words
    if isinstance(second, str):
        second = _second_words(second)
    split = []
    for lo in range(0, n - 1, STEP * 4):
        cand = np.flatnonzero(same[lo:lo + STEP * 4]) + lo
        split.append(cand[second[order[cand]] != second[order[cand + 1]]])
    split = np.concatenate(split) if split else np.zeros(0, np.int64)
    if len(split):                            # rare: equal first words, other second words
        _split_runs(order, same, split, second)
    del second, split
    start = np.arange(n, dtype=np.int64)      # per sorted position: where its group starts
    start[1:][same] = 0
    del same
    np.maximum.accumulate(start, out=start)
    for lo in range(0, n, STEP * 4):          # the group's first row (the lowest: stable order)
        start[lo:lo + STEP * 4] = order[start[lo:lo + STEP * 4]]
    reps = np.empty(n, dtype=np.int64)
    reps[order] = start
    return reps


def _split_runs(order: np.ndarray, same: np.ndarray, split: np.ndarray, second: np.ndarray) -> None:
    """Runs of equal first words holding other second words: sorted (stably) by the second word."""
    for k in np.unique(split).tolist():
        lo = k
        while lo > 0 and same[lo - 1]:
            lo -= 1
        hi = k + 1
        while hi < len(same) and same[hi]:
            hi += 1
        rows = order[lo:hi + 1].copy()
        rows = rows[np.argsort(second[rows], kind="stable")]
        order[lo:hi + 1] = rows
        sec = second[rows]
        same[lo:hi] = sec[1:] == sec[:-1]


# ----------------------------------------------------------------------------- scanning one file


def _scan_file(path: str, shown: str, block_size: int, progress: Callable[[int], None] | None,
               spool_dir: str) -> tuple[_FileScan, GzipPoints | None]:
    """Index one FASTA or FASTQ file, plain or gzip (read in place: the seek points come back), its
    columns written to a spool in ``spool_dir``; ``shown`` is the name used in error messages."""
    _warned_descriptions.discard(shown)
    if not is_gzip(path):
        fmt = detect_format(path)
        with open(path, "rb", buffering=0) as raw:
            fh = Blocks(raw, progress, cr_only(raw.read(1 << 16)))
            raw.seek(0)
            return (_scan_fastq_file if fmt == "fastq" else _scan_fasta_file)(fh, shown, block_size,
                                                                             Spool(spool_dir)), None
    gz = GzipScan(path)
    try:
        head = gz.peek(1 << 20)  # a corrupt start is the scan's error, at its line
        fmt = detect_format(path, lambda _path, _mode: io.BytesIO(head))
        fh = Blocks(gz, progress, cr_only(head[:1 << 16]))
        scan = (_scan_fastq_file if fmt == "fastq" else _scan_fasta_file)(fh, shown, block_size, Spool(spool_dir))
        return scan, gz.points()
    except (GzipCorrupt, OSError, EOFError, zlib.error) as err:
        if isinstance(err, (FileNotFoundError, PermissionError)):
            raise
        raise FastaError(shown, gz.lines + 1, f"corrupt or truncated gzip file ({err}); "
                                              "re-download or recompress it") from None
    finally:
        gz.close()


def _scan_any(path: str, progress: Callable[[int], None] | None, spool_dir: str, *, block_size: int = BLOCK_SIZE):
    """``(scan, gzip seek points or None, preset mates or None)`` of one input file."""
    if is_bam(path):            # mates from the flags; read back by virtual offset
        scan, mates = scan_bam_file(path, progress, Spool(spool_dir))
        return scan, None, mates
    scan, points = _scan_file(path, path, block_size, progress, spool_dir)
    return scan, points, None


# ----------------------------------------------------------------------------- the build


def meta_of(index) -> dict:
    """What ``meta.json`` says of ``index`` besides the format version and the row count."""
    return {"files": index.files, "sources": index.sources, "fingerprint": index.fingerprint,
            "file_digests": index.file_digests, "file_sizes": index.file_sizes, "identity": index.identity,
            "file_format": index.file_format, "samples": index.samples, "input_spec": index.input_spec,
            "gzip": sorted(index.gz)}


class _Meta:
    """The per-file facts of a build, shaped as an index for :func:`meta_of`."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _cleanup(root: str, pid: int) -> None:
    if os.getpid() == pid:                    # never from a forked child holding a copy
        shutil.rmtree(root, ignore_errors=True)


class Owner:
    """A built index's temporary directory: removed with the index, unless :meth:`install` moves the
    index out of it (``SequenceIndex.save``)."""

    def __init__(self, index, root: str):
        self.root = root
        self._fin = weakref.finalize(index, _cleanup, root, os.getpid())

    def install(self, store: str, path: str) -> None:
        move_dir(store, path)
        self._fin()                           # the root, now without the index


def build_index(cls, specs, identity: list, *, block_size: int, progress, workers: int, min_range: int | None,
                spool_dir) -> object:
    """Scan ``specs`` (:class:`~virnucdist.data.inputs.InputFile`), write the index directory in bounded
    memory into a temporary directory in ``spool_dir`` and return it opened (memory-mapped)."""
    paths = [f.path for f in specs]
    root = tempfile.mkdtemp(prefix=".index-build-", dir=os.fspath(spool_dir) if spool_dir is not None else None)
    try:
        work = os.path.join(root, "scan")
        results = scan_files(paths, functools.partial(_scan_any, block_size=block_size), work,
                             workers=workers, block_size=block_size, progress=progress,
                             **({"min_range": min_range} if min_range else {}))
        scans = [r[0] for r in results]
        gz = {f: r[1] for f, r in enumerate(results) if r[1] is not None}
        preset = {f: r[2] for f, r in enumerate(results) if r[2] is not None}
        del results
        layout = pair_layout(specs, [s.ids for s in scans], [s.header_line for s in scans],
                             [(s.fmt, s.digest) for s in scans], preset)
        digests = [s.digest for s in scans]
        sizes = [int(s.size) for s in scans]
        fp = hashlib.sha256()
        for d, sz in zip(digests, sizes):
            fp.update(f"{sz}:{d}\n".encode())
        spec = [f.spec() for f in specs]
        if any(x != [None, None, False] for x in spec):      # samples, mates, interleaving: other ids, other run
            fp.update(json.dumps(spec).encode())
        meta = meta_of(_Meta(files=list(paths), sources=list(paths), fingerprint=fp.hexdigest(), file_digests=digests,
                             file_sizes=sizes, identity=identity, file_format=[s.fmt for s in scans],
                             samples=layout.samples, input_spec=[list(x) for x in spec], gz=gz))
        out = os.path.join(root, "index")
        os.makedirs(out)
        n, keys, h0 = write_columns(out, scans, layout)
        shutil.rmtree(work, ignore_errors=True)
        np.save(os.path.join(out, "letter_counts.npy"), np.ascontiguousarray(np.stack([s.counts for s in scans])))
        write_extra(out, {f"gzip-{f}.npz": p.to_bytes() for f, p in gz.items()})
        write_meta(out, meta, n)
        index = cls.load(out)
        index._owner = Owner(index, root)
        check_unique(index, keys)
        del keys
        box = [h0]
        del h0
        np.save(os.path.join(out, "representatives.npy"), representatives(box, os.path.join(out, "content_hash.npy")))
        index._reps = np.load(os.path.join(out, "representatives.npy"), mmap_mode="r")
        return index
    except BaseException as err:
        shutil.rmtree(root, ignore_errors=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise IndexSpaceError(
                f"no space left on {os.path.dirname(root)} while writing the sequence index (it takes about 110 "
                "bytes per read, up to twice that while it is built); free space and rerun the same command"
            ) from None
        raise
