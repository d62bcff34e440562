"""``--reproducible``: the same bytes whatever the world size, token budget, resume point or batch
neighbours (on one kind of device, one torch version, one thread count per rank on CPU).

Batches are packed up to a fixed tile of tokens (:data:`TILE`, per device kind; ``--toks-per-batch``
then only sizes the windows), padded to exactly that tile (:func:`~virnucdist.packing.pad_to_tile`),
and run with the model's neighbour-independent paths (:mod:`virnucdist.models.determinism`):
attention and pooling per sequence. The padding is dropped from the output here.
"""

from __future__ import annotations

import torch

from ..models.adapters import EmbedOutput
from ..models.determinism import reproducible
from ..packing import PackedBatch, pad_to_tile

__all__ = ["TILE", "ROW_TILE", "tile_for", "tiled_embed", "tiled_rows"]

#: tokens per forward in reproducible mode (the default --toks-per-batch of each device kind)
TILE = {"cpu": 4096, "cuda": 65536}


#: rows per call of a row-wise head (predict's classifier) in reproducible mode
ROW_TILE = 1024


def tiled_rows(fn, x: torch.Tensor, rows: int = ROW_TILE) -> torch.Tensor:
    """``fn`` (row-wise, e.g. an MLP) over ``x [N, D]`` in calls of exactly ``rows`` rows (the last one padded
    with zeros): a row's result does not depend on how many rows came with it."""
    n = x.shape[0]
    if n == 0:
        return fn(x)
    padded = torch.cat([x, x.new_zeros(-n % rows, *x.shape[1:])]) if n % rows else x
    return torch.cat([fn(padded[i:i + rows]) for i in range(0, padded.shape[0], rows)])[:n]


def tile_for(device: torch.device) -> int:
    return TILE.get(device.type, TILE["cpu"])


def tiled_embed(model, batch: PackedBatch, layers, per_token: bool, tile: int) -> EmbedOutput:
    """``model.embed`` on ``batch`` padded to ``tile`` tokens, in reproducible mode; the real records' output."""
    b = batch.num_seqs
    with reproducible():
        out = model.embed(pad_to_tile(batch, tile), layers, per_token)
    pooled = [p[:b] for p in out.pooled]
    if not per_token:
        return EmbedOutput(pooled)
    lengths = out.token_lengths[:b]
    n = int(lengths.sum())
    return EmbedOutput(pooled, [t[:n] for t in out.tokens], lengths)
