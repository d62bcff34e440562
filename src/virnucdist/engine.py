"""Pieces every entrypoint's rank loop shares: output directory checks, the run
manifest, dtype choice, out-of-memory splitting and asynchronous result copies."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch

from ._testhooks import test_hook  # test-only fault injection; see _testhooks
from .errors import UserError
from .packing import PackedBatch, split_batch
from .telemetry import Telemetry

log = logging.getLogger("virnucdist")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def prepare_output_dir(path: str | Path, rank: int, inputs: Sequence[str] = ()) -> Path:
    """Create ``path`` and check it is writable and the inputs exist; clear errors otherwise."""
    for p in inputs:
        if not Path(p).is_file():
            raise UserError(f"input {p} does not exist or is not a file")
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{rank}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"output directory {out} is not writable ({e.strerror}); choose another with -o") from None
    return out


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu" and name != "fp32":
        log.warning("--dtype %s on CPU: half precision is slow and inexact there; using it as asked", name)
    return DTYPES[name]


def check_manifest(out: Path, manifest: dict, overwrite: bool, outputs: list[str]) -> str | None:
    """Rank 0: refuse to mix outputs of different inputs/models; returns an error message or None.

    With ``overwrite``, a mismatching earlier run's ``outputs`` (names under ``out``) are deleted.
    """
    path = out / "run.json"
    if path.exists():
        old = json.loads(path.read_text())
        changed = [k for k in manifest if k != "virnucdist" and old.get(k) != manifest[k]]
        if changed and not overwrite:
            return (f"{out} holds a run with a different {', '.join(changed)}; use another output directory, "
                    f"or --overwrite to discard it")
        if changed:
            for p in [out / name for name in outputs]:
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    tmp = path.with_name("run.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path)
    return None


class BatchRunner:
    """Runs packed batches through a model; out-of-memory splits the batch and lowers the cap."""

    def __init__(self, fn, device: torch.device, telemetry: Telemetry):
        self.fn, self.device, self.tel = fn, device, telemetry
        self.cap: int | None = None  # tokens per forward after an OOM

    def __call__(self, batch: PackedBatch):
        """Yields ``(host_batch, device_output)`` pairs covering every sequence of ``batch``."""
        if self.cap is not None and batch.num_tokens > self.cap and batch.num_seqs > 1:
            for half in split_batch(batch):
                yield from self(half)
            return
        try:
            test_hook("forward", tokens=batch.num_tokens)
            out = self.fn(batch.to(self.device, non_blocking=True))
        except torch.OutOfMemoryError:
            if batch.num_seqs < 2:
                raise UserError(f"out of GPU memory on a single sequence of {batch.num_tokens} tokens; "
                                f"lower --truncation-seq-length or use a GPU with more memory") from None
            self.tel.stats.oom_splits += 1
            self.cap = batch.num_tokens // 2
            log.warning("out of memory on a batch of %d tokens: splitting it, token cap now %d",
                        batch.num_tokens, self.cap)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            for half in split_batch(batch):
                yield from self(half)
            return
        yield batch, out


def to_host_async(t: torch.Tensor):
    """Start a device->host copy; returns (host tensor, event to wait on or None)."""
    (host,), ev = to_host_async_all(t)
    return host, ev


def to_host_async_all(*tensors: torch.Tensor):
    """Device->host copies of several tensors behind one event: ``((host, ...), event or None)``."""
    if not tensors or tensors[0].device.type != "cuda":
        return tensors, None
    hosts = tuple(t.to("cpu", non_blocking=True) for t in tensors)
    ev = torch.cuda.Event()
    ev.record()
    return hosts, ev


def run_job(parser: argparse.ArgumentParser, config_cls, job, argv: list[str] | None) -> int:
    """``main()`` of an entrypoint: flags -> frozen config (1:1) -> ``job(cfg, ctx)`` on this rank."""
    fields = vars(parser.parse_args(argv))
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}  # frozen: lists -> tuples
    cfg = config_cls(**fields)
    from .launch.dist import init_distributed

    ctx = init_distributed(cfg.device)
    try:
        job(cfg, ctx)
    finally:
        ctx.shutdown()
    return 0
