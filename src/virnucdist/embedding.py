"""The embedding job behind ``torchrun ... -m virnucdist.embed``: ESM-2 or DNABERT-S.

Every rank: load (rank 0 builds) the index, skip records already in the run's
shards, take its token-balanced share, pack, embed, append to its shard.
Rank 0 then merges the shards into ``OUTDIR/embeddings.h5`` in input order and
writes ``OUTDIR/run_report.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .engine import (
    DTYPES,
    BatchRunner,
    check_manifest,
    prepare_output_dir,
    resolve_dtype,
    run_job,
    test_hook,
    to_host_async,
    to_host_async_all,
)
from .errors import UserError
from .launch.dist import DistContext, init_distributed
from .launch.logs import setup_logging
from .models.loading import LoadedModel, load_model
from .packing import PackedBatchLoader
from .progress import Progress, index_progress
from .sharding.index import SequenceIndex, build_index_distributed
from .sharding.partition import partition
from .telemetry import Telemetry, format_summary, write_run_report
from .writers import ShardWriter, finalize_embeddings, scan_shards

__all__ = ["EmbedConfig", "embed", "main"]

log = logging.getLogger("virnucdist")

DEFAULT_TOKS = {"cpu": 4096, "cuda": 65536}


@dataclass(frozen=True)
class EmbedConfig:
    """One embedding run; CLI flags map 1:1 to these fields."""

    inputs: tuple[str, ...]
    model: str
    output_dir: str
    random_init: bool = False
    seed: int = 0
    toks_per_batch: int | None = None  # None: a per-device default
    dtype: str | None = None  # None: bf16 on CUDA, fp32 on CPU
    repr_layer: int = -1
    include: tuple[str, ...] = ("mean",)  # "mean" always; "per_tok" adds the ragged per-token states
    truncation_seq_length: int = 1022
    device: str | None = None  # None: CUDA when available
    num_workers: int = 2
    flush_every: int = 4096
    overwrite: bool = False
    quiet: bool = False


@dataclass
class EmbedResult:
    output: Path
    report: dict = field(default_factory=dict)


def run_manifest(cfg: EmbedConfig, index: SequenceIndex, model: LoadedModel, dtype: torch.dtype) -> dict:
    """What must match for shards of an earlier attempt to be reused."""
    return {
        "virnucdist": __version__,
        "input_fingerprint": index.fingerprint,
        "records": len(index),
        "model": {"kind": model.kind, "name": model.name, "source": model.source, "dim": model.embed_dim},
        "repr_layer": cfg.repr_layer,
        "dtype": str(dtype).removeprefix("torch."),
        "truncation_seq_length": cfg.truncation_seq_length,
        "per_token": "per_tok" in cfg.include,
    }


def embed(cfg: EmbedConfig, ctx: DistContext | None = None, model: LoadedModel | None = None) -> EmbedResult:
    """Run one embedding job on this rank (call on every rank under torchrun).

    ``model``: an already loaded model (e.g. shared between runs, or your own
    :class:`~virnucdist.models.loading.LoadedModel`); by default ``cfg.model`` is loaded.
    """
    t_start = time.perf_counter()
    ctx = ctx or init_distributed(cfg.device)
    out = prepare_output_dir(cfg.output_dir, ctx.rank, cfg.inputs)
    setup_logging(out, ctx.rank, cfg.quiet)
    tel = Telemetry(ctx.rank, ctx.device)

    with tel.phase("index"):
        bar = index_progress(cfg.inputs, ctx.is_main and not cfg.quiet)
        index = build_index_distributed(list(cfg.inputs), out, ctx.rank, ctx.world_size, ctx.barrier, bar.advance)
        bar.close()
    dtype = resolve_dtype(cfg.dtype, ctx.device)
    with tel.phase("model_load"):
        if model is None:
            model = load_model(cfg.model, device=ctx.device, dtype=dtype, random_init=cfg.random_init,
                               seed=cfg.seed, truncation_seq_length=cfg.truncation_seq_length)
    layers = model.check_layers((cfg.repr_layer,))  # a LayerError (UserError) out of the model's range

    manifest = run_manifest(cfg, index, model, dtype)
    err = check_manifest(out, manifest, cfg.overwrite, ["shards", "embeddings.h5", "run_report.json"]) \
        if ctx.is_main else None
    err = ctx.broadcast_object(err)
    if err:
        raise UserError(err)

    lengths = np.asarray(index.length, dtype=np.int64)
    empty = lengths == 0
    done, err = None, None
    if ctx.is_main:
        try:
            scan = scan_shards(out / "shards", len(index), index.ids)
            done = scan.done
            if scan.corrupt:
                log.warning("set aside %d unreadable shard(s) (killed mid-write); their records are redone",
                            len(scan.corrupt))
        except ValueError as e:  # shards of another input: every rank stops with the message
            err = str(e)
    done, err = ctx.broadcast_object((done, err))
    if err:
        raise UserError(err)
    shares = partition(np.asarray([model.tokenizer.estimate_tokens(int(n)) for n in lengths], dtype=np.int64),
                       ctx.world_size, skip=done | empty)
    mine = shares[ctx.rank]
    tel.stats.resumed_records = int(done.sum()) if ctx.is_main else 0
    tel.stats.skipped = {"empty_sequence": int(empty.sum())} if ctx.is_main else {}
    if ctx.is_main:
        log.info("%d records in %d file(s); %d already done, %d empty (skipped); %d to embed on %d rank(s) with %s",
                 len(index), len(index.files), int(done.sum()), int(empty.sum()),
                 sum(len(s) for s in shares), ctx.world_size, model.name)
        if empty.any():
            log.warning("skipping %d empty record(s), e.g. %s", int(empty.sum()),
                        [index.ids[i] for i in np.flatnonzero(empty)[:3]])
    cap = getattr(model.tokenizer, "truncation_seq_length", None)  # ESM-2's; DNABERT-S has no length cap
    too_long = np.flatnonzero(lengths > cap) if cap is not None else np.zeros(0, dtype=np.int64)
    if ctx.is_main and len(too_long):
        i = int(too_long[0])
        log.warning("%d record(s) longer than %d residues are embedded from their first %d only (as fair-esm's "
                    "extract.py does), e.g. %r (%d residues) at %s; --truncation-seq-length changes the cap",
                    len(too_long), cap, cap, index.ids[i], int(lengths[i]), index.where(i))

    toks = cfg.toks_per_batch or DEFAULT_TOKS.get(ctx.device.type, 4096)
    loader = PackedBatchLoader(index.read, mine, lengths[mine], model.tokenizer, toks,
                               num_workers=cfg.num_workers, pin_memory=ctx.device.type == "cuda")
    per_tok = "per_tok" in cfg.include
    writer = ShardWriter(out / "shards", ctx.rank, model.embed_dim, index.ids, flush_every=cfg.flush_every,
                         attrs={"model": model.name}, per_token=per_tok)

    def forward(b):
        o = model.embed(b, layers, per_tok)
        return (o.pooled[0], o.tokens[0], o.token_lengths) if per_tok else o.pooled[0]

    runner = BatchRunner(forward, ctx.device, tel)
    progress = Progress(total_records=len(mine), total_tokens=loader.sampler.planned_tokens,
                        enabled=ctx.is_main and not cfg.quiet, world_size=ctx.world_size)
    s = tel.stats
    try:
        with torch.inference_mode(), tel.phase("inference"):
            for batch in loader:
                for part, out_ in runner(batch):
                    if per_tok:
                        (emb, tok, tok_len), ev = to_host_async_all(*out_)
                        writer.write(part.rows, emb, ev, tokens=tok, token_lengths=tok_len)
                    else:
                        host, ev = to_host_async(out_)
                        writer.write(part.rows, host, ev)
                s.truncated += batch.n_truncated
                if batch.unknown_rows:
                    s.records_with_unknown_letters += len(batch.unknown_rows)
                    s.unknown_letter_examples += [index.ids[r] for r in batch.unknown_rows[:5 - len(
                        s.unknown_letter_examples)]]
                progress.update(batch.num_seqs, batch.num_tokens)
                # test-only fault injection (delay / crash / kill; see virnucdist._testhooks)
                test_hook("batch", rank=ctx.rank, batches=loader.batches_seen)
    finally:
        progress.close()
        with tel.phase("write_flush", sync=False):
            writer.close()
    s.sequences, s.tokens, s.batches = loader.records_seen, loader.tokens_seen, loader.batches_seen
    s.packing_efficiency, s.toks_per_batch = loader.packing_efficiency, toks
    s.planned_tokens = loader.sampler.planned_tokens
    ctx.barrier()

    final = out / "embeddings.h5"
    report: dict = {}
    with tel.phase("finalize", sync=False):
        if ctx.is_main:
            keep = np.flatnonzero(~empty)
            attrs = {
                "model": model.name, "model_kind": model.kind, "model_source": model.source,
                "random_init": cfg.random_init, "dtype": manifest["dtype"], "pooling": model.attrs["pooling"],
                "repr_layer": cfg.repr_layer, "truncation_seq_length": cfg.truncation_seq_length,
                "include": json.dumps(list(cfg.include)),
                "virnucdist_version": __version__, "input_fingerprint": index.fingerprint,
                "inputs": json.dumps([str(p) for p in cfg.inputs]),
                "skipped_empty_ids": json.dumps([index.ids[i] for i in np.flatnonzero(empty)]),
            }
            bar = Progress(0, len(keep), enabled=not cfg.quiet, desc=f"writing {final.name}", unit="rec")
            finalize_embeddings(out / "shards", final, index.ids, keep, attrs, progress=bar.advance,
                                per_token=per_tok)
            bar.close()
    stats = ctx.all_gather_object(tel.finish())
    if ctx.is_main:
        _warn_unknown_letters(stats, index, model)
        wall = time.perf_counter() - t_start
        report = write_run_report(out / "run_report.json", stats, wall, {
            "task": "embed", "config": asdict(cfg), "world_size": ctx.world_size, "output": str(final),
            "restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            "skipped": {"empty_sequence": [index.ids[i] for i in np.flatnonzero(empty)]},
            "truncated_records": {"records": len(too_long), "max_residues": cap,
                                  "examples": [index.ids[i] for i in too_long[:10]]},
        })
        if not cfg.quiet:
            log.info("%s", format_summary(stats, wall))
            log.info("wrote %s", final)
    ctx.barrier()
    return EmbedResult(final, report)


def _warn_unknown_letters(stats: list, index: SequenceIndex, model: LoadedModel) -> None:
    """Rank 0, once per run: records embedded with the tokenizer's unknown token, one example named."""
    n = sum(r.records_with_unknown_letters for r in stats)
    examples = [e for r in stats for e in r.unknown_letter_examples]
    if not n or not examples:
        return
    i = index.ids.index(examples[0])  # a list scan: no id -> row dict for a once-per-run message
    tok = model.tokenizer
    bad = tok.unknown_letters(index.read(i))
    log.warning("%d record(s) contain letters %s does not know, embedded as its unknown token (counted in "
                "run_report.json: records_with_unknown_letters), e.g. %r at %s has %s; check that the input is "
                "%s", n, model.name, examples[0], index.where(i), ", ".join(map(repr, bad)),
                "protein (ESM-2)" if model.molecule == "protein" else "DNA (A, C, G, T; DNABERT-S)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m virnucdist.embed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="FASTA file(s), plain or .gz")
    p.add_argument("--model", required=True, help="ESM-2 name or .pt path, or a DNABERT-S directory")
    p.add_argument("-o", "--output-dir", required=True)
    p.add_argument("--random-init", action="store_true", help="seeded random weights (tests, demos, benchmarks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--toks-per-batch", type=int, default=None,
                   help=f"token budget per packed batch (default {DEFAULT_TOKS})")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--repr-layer", type=int, default=-1, help="ESM-2 layer to pool (default: last)")
    p.add_argument("--include", nargs="+", choices=["mean", "per_tok"], default=["mean"],
                   help="mean: pooled embeddings (always written); per_tok: also every token's state "
                        "(ESM-2: residues only), ragged in embeddings.h5 /per_token")
    p.add_argument("--truncation-seq-length", type=int, default=1022)
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes per rank")
    p.add_argument("--flush-every", type=int, default=4096, help="records per shard flush")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run of other inputs/model")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_job(build_parser(), EmbedConfig, embed, argv)

