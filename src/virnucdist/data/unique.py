"""Duplicate read ids in an index: unique per sample when the index holds several samples (two
samples of a sequencing run may hold the same read ids), across all inputs otherwise.

64-bit hashes of the keys (the id, or ``(sample, id)``), from the build's scanners, sorted: 16 bytes
per record, no dict of all ids; equal hashes are compared as strings, and the first duplicate in row
order is named with both places.
"""

from __future__ import annotations

import numpy as np

from .fasta import FastaError

__all__ = ["check_unique", "mix_sample"]


def mix_sample(h: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Key hashes of ``(sample, id)`` from the ids' hashes ``h`` (int64, changed in place)."""
    u = h.view(np.uint64)
    with np.errstate(over="ignore"):
        u *= np.uint64(0x9E3779B97F4A7C15)
        u += np.asarray(sample).astype(np.uint64)
    return h


def check_unique(index, h: np.ndarray) -> None:
    """Raise :class:`FastaError` for the first repeated id (within its sample when there are several).

    ``h``: the key hashes (int64 per row, equal for equal keys: the build's hashes of the ids' UTF-8
    bytes, mixed with the sample by :func:`mix_sample` when there are several). Memory: ``h`` and a
    sorted copy (16 bytes per row); candidates (equal hashes) are compared as ids."""
    ids = index.ids
    hs = np.sort(h)
    dup = hs[1:][hs[1:] == hs[:-1]]
    del hs
    if not len(dup):
        return
    multi = len(index.samples) > 1
    dup = np.unique(dup)
    rows = []                          # rows whose hash is repeated, found in slices (bounded temporaries)
    for lo in range(0, len(h), 1 << 20):
        part = h[lo:lo + (1 << 20)]
        at = np.minimum(np.searchsorted(dup, part), len(dup) - 1)
        rows.append(np.flatnonzero(dup[at] == part) + lo)
    rows = np.concatenate(rows)
    seen: dict = {}
    for i in rows.tolist():            # candidates in row order: the first repeat is reported
        rid = ids[i]
        j = seen.setdefault((int(index.sample[i]), rid) if multi else rid, i)
        if j != i:
            scope = (f"within a sample (sample {index.samples[int(index.sample[i])]!r})" if multi
                     else "across all input files")
            raise FastaError(
                index.sources[index.file_idx[i]], int(index.header_line[i]),
                f"duplicate sequence id {rid!r}: first at {index.where(j)}, again at "
                f"{index.where(i)}; sequence ids must be unique {scope} "
                "(rename or remove one of them)")
