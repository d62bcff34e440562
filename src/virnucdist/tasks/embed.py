"""The embedding task behind ``torchrun ... -m virnucdist.embed``: ESM-2 or DNABERT-S.

A record is its own model input; a window of records is tokenized in a DataLoader
worker, packed longest-first into token-budget batches, run through the model, and
each record's result is its pooled vector for every layer asked for (plus, with
``--include per_tok``, every token's state). Rank 0 then writes ``embeddings.h5``
in input order: ``ids``, ``embeddings`` (the first layer asked for) and, for several
layers, ``embeddings_layer{L}`` each; ``per_token/`` holds the ragged states.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import torch

from .._version import __version__
from ..engine import RunConfig, RunResult, add_run_arguments, run, run_main
from ..engine.config import numerics, positive_int, torch_dtype
from ..data.inputs import as_inputs
from ..errors import UserError
from ..launch.dist import DistContext
from ..models.fp8 import to_fp8
from ..models.loading import load_model
from ..packing import encode_records, pack_longest_first
from ..engine.runner import BatchRunner, to_host_async
from ..writers import Column, Part, RowIds, ShardSchema, write_embeddings_h5
from ..engine.task import Block, RunPlan
from .tiles import tile_for, tiled_embed
from .identity import check_model_spec, model_identity, molecule_of_spec

__all__ = ["EmbedConfig", "EmbedTask", "embed", "build_parser", "main"]

log = logging.getLogger("virnucdist")


@dataclass(frozen=True, kw_only=True)
class EmbedConfig(RunConfig):
    """One embedding run: the shared :class:`~virnucdist.engine.RunConfig` fields and these; CLI flags map 1:1."""

    model: str
    repr_layer: int = -1
    repr_layers: tuple[int, ...] | None = None  # several layers in one pass (overrides repr_layer)
    include: tuple[str, ...] = ("mean",)  # "mean" always; "per_tok" adds the ragged per-token states
    truncation_seq_length: int = 1022
    reproducible: bool = False  # the same bytes whatever the world size, budget, resume point (tasks/tiles.py)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.repr_layers) if self.repr_layers else (self.repr_layer,)


@dataclass
class _MakeEmbedBlock:
    """Worker side: read, tokenize and pack one window (pure: the same window gives the same block)."""

    tokenizer: object
    budget: int

    def __call__(self, index, number: int, rows: np.ndarray) -> Block:
        enc = encode_records([index.read(int(r)) for r in rows], self.tokenizer)
        ids = enc.ids
        counters: dict[str, int] = {}
        examples: dict[str, list[str]] = {}
        for key, hits in (("truncated", enc.truncated), ("unknown_letters", enc.unknown),
                          ("terminal_stops", enc.terminal_stops)):  # ESM-2 strips one terminal '*': counted
            if hits:
                counters[key] = len(hits)
                examples[key] = [index.ids[int(rows[j])] for j in hits[:5]]
        batches = pack_longest_first(ids, self.budget)
        tokens = sum(len(t) for t in ids)
        counters["packed_tokens"] = tokens
        counters["packed_capacity"] = sum(max(self.budget, b.num_tokens) for b in batches)
        return Block(number, np.asarray(rows, dtype=np.int64), batches, tokens, counters, examples)


class EmbedTask:
    """Embed each record with one model; see the module docstring."""

    name, verb = "embed", "embedding"
    outputs = ("embeddings.h5",)
    dedup = True

    def __init__(self, config: EmbedConfig, model=None):
        if config.interleaved:
            config = replace(config, inputs=tuple(as_inputs(config.inputs, interleaved=True)))
        self.config, self.model = config, model
        self.per_token = "per_tok" in config.include
        self.runners: list[BatchRunner] = []

    # -- what the engine asks before any work
    def identity(self) -> dict:
        c = self.config
        return {"model": model_identity(c.model, c.random_init, c.seed), "repr_layers": list(c.layers),
                "truncation_seq_length": c.truncation_seq_length,
                "per_token": self.per_token, **({"reproducible": True} if c.reproducible else {})}

    def check(self, index) -> None:
        check_model_spec(self.config.model)
        if self.config.allow_any_molecule:
            return
        from ..data.alphabet import check_molecule

        check_molecule(index, molecule_of_spec(self.config.model), self.config.model, "--allow-any-molecule")

    # -- on every rank (self.config is resolved: dtype, toks_per_batch, ... are what runs)
    def prepare(self, ctx: DistContext, index) -> None:
        c = self.config
        dtype = torch_dtype(c.dtype)
        self.dtype_name = "fp8" if c.dtype == "fp8" else str(dtype).removeprefix("torch.")
        if self.model is None:
            self.model = load_model(c.model, device=ctx.device, dtype=dtype, random_init=c.random_init, seed=c.seed,
                                    truncation_seq_length=c.truncation_seq_length)
            if c.dtype == "fp8":  # ESM-2's layer GEMMs in e4m3 with per-channel / per-token scales
                self.model.module = to_fp8(self.model.module, c.fp8_policy)  # resolved: fast accumulation too
        try:
            self.layers = self.model.check_layers(c.layers)
        except ValueError as e:
            raise UserError(str(e)) from None
        cap = getattr(self.model.tokenizer, "truncation_seq_length", None)  # ESM-2's; DNABERT-S has none
        # rank 0 only (the report's count): another rank never reads the whole length column
        long = (np.flatnonzero(np.asarray(index.length) > cap) if cap is not None and ctx.is_main
                else np.zeros(0, np.int64))
        self.truncated = {"records": len(long), "max_residues": cap, "examples": [index.ids[i] for i in long[:10]]}
        if ctx.is_main and len(long):
            i = int(long[0])
            log.warning("%d record(s) longer than %d residues are embedded from their first %d only (as fair-esm's "
                        "extract.py does), e.g. %r (%d residues) at %s; --truncation-seq-length changes the cap",
                        len(long), cap, cap, index.ids[i], int(index.length[i]), index.where(i))
        self.budget = c.toks_per_batch
        if c.reproducible:  # batches packed to one fixed tile, padded to it; per-sequence attention and pooling
            tile = self.budget = tile_for(ctx.device)
            self.runners = [BatchRunner(lambda b: tiled_embed(self.model, b, self.layers, self.per_token, tile),
                                        ctx.device)]
        else:
            self.runners = [BatchRunner(lambda b: self.model.embed(b, self.layers, self.per_token), ctx.device)]
        self.models = [self.model]

    def costs(self, index) -> np.ndarray:
        est = self.model.tokenizer.estimate_tokens
        return np.fromiter((est(int(n)) for n in index.length), dtype=np.int64, count=len(index))

    def schema(self) -> ShardSchema:
        d = self.model.dim
        return ShardSchema("embed", tuple(Column(f"layer{L}", "f4", (d,)) for L in self.layers),
                           tuple(Column(f"tokens_layer{L}", "f4", (d,)) for L in self.layers) if self.per_token else (),
                           {"model": self.model.name})

    def block_maker(self):
        return _MakeEmbedBlock(self.model.tokenizer, self.budget)

    def run_block(self, block: Block) -> list[Part]:
        parts = []
        for batch in block.batches:
            for part, out in self.runners[0](batch):
                parts.append(self._part(part, out))
        return parts

    def _part(self, part, out) -> Part:
        b, d = part.num_seqs, self.model.dim
        if out is None:  # a lone record that ran out of memory even alone: a counted, named skip
            zeros = torch.zeros(b, d)
            ragged = {f"tokens_layer{L}": torch.zeros(0, d) for L in self.layers} if self.per_token else None
            return Part(part.rows, {f"layer{L}": zeros for L in self.layers},
                        torch.zeros(b, dtype=torch.int64) if self.per_token else None, ragged,
                        skipped={j: "out of memory" for j in range(b)})
        tensors = list(out.pooled) + (list(out.tokens) + [out.token_lengths] if self.per_token else [])
        host, ev = to_host_async(*tensors)
        k = len(self.layers)
        vals = {f"layer{L}": host[i] for i, L in enumerate(self.layers)}
        if not self.per_token:
            return Part(part.rows, vals, event=ev)
        ragged = {f"tokens_layer{L}": host[k + i] for i, L in enumerate(self.layers)}
        return Part(part.rows, vals, host[-1], ragged, ev)

    def report_extra(self) -> dict:
        return {"truncated_records": getattr(self, "truncated", {"records": 0})}

    # -- rank 0
    def finalize(self, out: Path, index, results, plan: RunPlan) -> dict:
        c, m = self.config, self.model
        n, d = len(plan.rows), m.dim
        attrs = {
            "model": m.name, "model_source": m.source, "random_init": c.random_init,
            **numerics(c, hdf5=True), "dtype": self.dtype_name,
            "pooling": m.attrs.get("pooling", ""), "repr_layer": c.layers[0], "repr_layers": json.dumps(self.layers),
            "truncation_seq_length": c.truncation_seq_length, "include": json.dumps(list(c.include)),
            "virnucdist_version": __version__, "input_fingerprint": plan.fingerprint,
            "inputs": json.dumps([str(getattr(p, "path", p)) for p in c.inputs]),
            "skipped_empty_ids": json.dumps([index.ids[i] for i in plan.empty]),
            "skipped_ids": json.dumps(sorted(index.ids[i] for i in plan.bad)),
        }
        several = len(self.layers) > 1
        name = (lambda L: f"embeddings_layer{L}") if several else (lambda L: "embeddings")
        dense = {name(L): Column(f"layer{L}", "f4", (d,)) for L in self.layers}
        ragged = {f"per_token/{name(L)}": Column(f"tokens_layer{L}", "f4", (d,)) for L in self.layers} \
            if self.per_token else None
        final = out / "embeddings.h5"
        write_embeddings_h5(final, RowIds(index.ids, plan.rows),
                            results.windows(plan.rows, plan.source, ragged=self.per_token), n, dense, ragged=ragged,
                            ragged_lengths=results.lengths[plan.source] if self.per_token else None, attrs=attrs)
        if several:  # "embeddings" is the first layer asked for: a hard link, no copy
            with h5py.File(final, "r+", locking=False) as f:
                f["embeddings"] = f[name(self.layers[0])]
                if self.per_token:
                    f["per_token/embeddings"] = f[f"per_token/{name(self.layers[0])}"]
        return {"records": n, "dim": d}


def embed(cfg: EmbedConfig, ctx: DistContext | None = None, model=None) -> RunResult:
    """Run one embedding job on this rank (call on every rank under torchrun).

    ``model``: an already loaded model (e.g. shared between runs); by default ``cfg.model`` is loaded.
    """
    return run(EmbedTask(cfg, model), ctx)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m virnucdist.embed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, dtype_help="fp8 (ESM-2 on H100/H200-class GPUs) is opt-in")
    p.add_argument("--model", required=True, help="ESM-2 name or .pt path, or a DNABERT-S directory")
    p.add_argument("--repr-layer", type=int, default=-1, help="layer to pool (default: last; 0 = embeddings)")
    p.add_argument("--repr-layers", type=int, nargs="+", default=None,
                   help="several layers in one pass (like fair-esm's --repr_layers), one dataset each")
    p.add_argument("--include", nargs="+", choices=["mean", "per_tok"], default=["mean"],
                   help="mean: pooled embeddings (always written); per_tok: also every token's state "
                        "(ESM-2: residues only), ragged in embeddings.h5 /per_token")
    p.add_argument("--truncation-seq-length", type=positive_int, default=1022)
    p.add_argument("--reproducible", action="store_true",
                   help="the same bytes whatever the world size, --toks-per-batch, resume point or batch neighbours "
                        "(same device kind and torch version): fixed-size padded batches, attention and pooling "
                        "per sequence; slower (README: Reproducibility)")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), EmbedConfig, EmbedTask, argv)
