"""Reproducible mode: a record's result does not depend on the other records of its batch.

Three things make a packed batch's per-record result depend on its neighbours, and the
``--reproducible`` runs remove each (see :func:`virnucdist.packing.pad_to_tile` for the first):

* GEMMs: the kernel (and its reduction order) is chosen from the row count; every forward then
  runs on exactly one fixed number of token rows (the tile), padded with dummy segments;
* attention: a padded or block-tiled kernel reduces over keys laid out by the batch (the padded
  length, the block offsets); here each sequence attends on its own tensors;
* pooling: ``index_add_`` accumulates with atomics on CUDA; here each sequence's slice is summed
  on its own, in token order.

Row-wise operations (LayerNorm, GELU, rotary, per-token FP8 scales) never mix rows. The switch is a
context (:func:`reproducible`) read by the model code at call time.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["reproducible", "is_reproducible", "segment_sums"]

_ON = False


def is_reproducible() -> bool:
    return _ON


@contextlib.contextmanager
def reproducible(on: bool = True) -> Iterator[None]:
    """Within this context the model code takes its neighbour-independent paths (when ``on``)."""
    global _ON
    old, _ON = _ON, bool(on)
    try:
        yield
    finally:
        _ON = old


def segment_sums(hidden, cu_seqlens, skip_ends: bool = False):
    """fp32 sum of ``hidden [T, D]`` over each packed segment -> ``[B, D]``, each segment's slice reduced on
    its own (its result depends on its own tokens only). ``skip_ends``: leave out each segment's first and
    last token (ESM-2's BOS/EOS)."""
    import torch

    bounds = cu_seqlens.tolist()
    d = hidden.shape[1]
    rows = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        if skip_ends:
            a, b = a + 1, b - 1
        rows.append(hidden[a:b].float().sum(0) if b > a else hidden.new_zeros(d, dtype=torch.float32))
    return torch.stack(rows) if rows else hidden.new_zeros(0, d, dtype=torch.float32)
