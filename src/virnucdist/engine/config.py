"""One run configuration: the fields every task shares, their flags, and what they resolve to.

:class:`RunConfig` holds the fields the engine reads (inputs, output directory, device, dtype,
token budget, workers, windows, dedup, ...), defined once with their command-line flags
(:func:`add_run_arguments`). A task's config (``EmbedConfig``, ``PredictConfig``) adds its own
fields to it. :func:`resolve` turns the defaults into what will run on this rank's device, in one
place, before the run's manifest is written:

* ``device``: ``"cuda"`` or ``"cpu"`` (the device the rank got);
* ``dtype``: ``"bf16"`` on CUDA, ``"fp32"`` on CPU by default; ``"fp8"`` checked against the GPU;
* ``toks_per_batch``: :data:`DEFAULT_TOKS` of the device by default;
* ``num_workers``: from the CPUs this rank may use by default (:func:`~virnucdist.launch.dist.workers_per_rank`);
* ``flush_every``: 1 (commit every window) by default;
* ``fp8_fast_accum``: the FP8 GEMMs' fast accumulation (``--fp8-fast-accum`` or
  ``VIRNUCDIST_FP8_FAST_ACCUM=1``); always False unless the dtype is fp8;
* ``fp8_policy``: which GEMMs run in FP8 (``--fp8-policy`` or ``VIRNUCDIST_FP8_POLICY``, default all;
  :class:`~virnucdist.models.fp8.FP8Policy`), written out in full with ``fast_accum`` (``--fp8-fast-accum``
  wins over the policy's ``fast=``); None unless the dtype is fp8.

The manifest (``run.json``) records the resolved values; those that change the numbers
(:data:`NUMERICS`) must match for a run to be resumed, so a CPU run resumed on a GPU is refused
instead of mixing fp32 and bf16 vectors in one file.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from dataclasses import dataclass

import torch

__all__ = ["RunConfig", "add_run_arguments", "config_from_args", "resolve", "torch_dtype", "numerics",
           "DTYPES", "DEFAULT_TOKS", "NUMERICS", "positive_int", "non_negative_int", "int_at_least"]

log = logging.getLogger("virnucdist")

DEFAULT_TOKS = {"cpu": 4096, "cuda": 65536}  # tokens per packed batch by device type

#: --dtype choices and the dtype the weights are loaded in; fp8 loads bf16 weights and the task
#: quantises ESM-2's layer GEMMs (models/fp8.py)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}

#: resolved fields that change the numbers: recorded in the manifest and the output files' attributes,
#: and a resume must match them
NUMERICS = ("dtype", "fp8_fast_accum", "fp8_policy")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The fields every task shares (the engine reads these); ``None``: resolved per device by :func:`resolve`."""

    inputs: tuple[str, ...]
    output_dir: str
    device: str | None = None  # None: CUDA when available
    dtype: str | None = None  # None: bf16 on CUDA, fp32 on CPU
    toks_per_batch: int | None = None  # None: DEFAULT_TOKS of the device
    num_workers: int | None = None  # DataLoader worker processes per rank; None: from the CPUs per local rank
    window_records: int | None = None  # records per window (the unit of commit); None: by tokens
    flush_every: int | None = None  # records per shard commit (at most; also every 10 s); None: every window
    fp8_fast_accum: bool | None = None  # None: VIRNUCDIST_FP8_FAST_ACCUM=1; only with dtype fp8
    fp8_policy: str | None = None  # None: VIRNUCDIST_FP8_POLICY, else all four GEMMs; only with dtype fp8
    random_init: bool = False  # seeded random weights (tests, demos, benchmarks)
    seed: int = 0
    dedup: bool = True
    keep_shards: bool = False
    allow_any_molecule: bool = False
    overwrite: bool = False
    quiet: bool = False
    interleaved: bool = False  # single files hold mates one after the other (R1/R2 files are told from their ids)


def int_at_least(low: int, what: str):
    """A flag's ``type=`` function: a value out of range is an argparse error (exit 2, one line naming the flag),
    never a silent zero-vector run. Returns an int >= ``low``; ``what`` says why (in the error message)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what} (>= {low}), got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value" messages
    return parse


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0, "0 or more")


def add_run_arguments(p: argparse.ArgumentParser, *,
                      inputs_help: str | None = "FASTA or FASTQ file(s), plain or .gz; R1 R2 of a pair (mates: {id}/1, "
                                                "{id}/2)", inputs_nargs: str = "+",
                      dtype_help: str = "", random_init_help: str = "seeded random weights (tests, demos, benchmarks)",
                      records: str = "records") -> None:
    """The flags of :class:`RunConfig`'s fields (``inputs`` positional unless ``inputs_help`` is None,
    ``-o/--output-dir`` required)."""
    if inputs_help is not None:
        p.add_argument("inputs", nargs=inputs_nargs, help=inputs_help)
        p.add_argument("--interleaved", action="store_true", help="single files hold mates one after the other")
    p.add_argument("-o", "--output-dir", required=True)
    p.add_argument("--random-init", action="store_true", help=random_init_help)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--toks-per-batch", type=positive_int, default=None,
                   help=f"token budget per packed batch (default {DEFAULT_TOKS})")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="default: bf16 on CUDA, fp32 on CPU" + (f"; {dtype_help}" if dtype_help else ""))
    p.add_argument("--fp8-fast-accum", action="store_true", default=None,
                   help="with --dtype fp8: fast (less exact) accumulation in the FP8 GEMMs "
                        "(default: VIRNUCDIST_FP8_FAST_ACCUM=1, else off)")
    p.add_argument("--fp8-policy", default=None, metavar="POLICY",
                   help="with --dtype fp8: which GEMMs run in FP8, e.g. all, all-bc, first2-bc, 'gemms=qkv+fc1+fc2;first=2;bc=1' "
                        "(default: VIRNUCDIST_FP8_POLICY, else the library default, models.fp8.DEFAULT_POLICY)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--num-workers", type=non_negative_int, default=None,
                   help="DataLoader worker processes per rank (default: from the CPUs this rank may use)")
    p.add_argument("--window-records", type=positive_int, default=None,
                   help=f"{records} per window, the unit of commit and resume (default: about 32 token budgets)")
    p.add_argument("--flush-every", type=positive_int, default=None,
                   help=f"{records} per shard commit, at most (default: every window)")
    p.add_argument("--no-dedup", dest="dedup", action="store_false",
                   help=f"compute every {records[:-1]}, also identical sequences (default: each distinct sequence once)")
    p.add_argument("--keep-shards", action="store_true", help="keep shards/ (and decompressed inputs) after the run")
    p.add_argument("--allow-any-molecule", action="store_true",
                   help="run even if the input looks like the wrong molecule for the model (DNA vs protein)")
    p.add_argument("--overwrite", action="store_true", help="discard an earlier run of other inputs/settings")
    p.add_argument("--quiet", action="store_true")


def config_from_args(config_cls, args: argparse.Namespace):
    """Parsed flags -> a frozen config (1:1; lists become tuples)."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()}
    return config_cls(**fields)


def torch_dtype(name: str) -> torch.dtype:
    """The dtype a resolved ``dtype`` name loads weights in (fp8: bf16, quantised by the task)."""
    return DTYPES[name]


def _dtype(name: str | None, device: torch.device) -> str:
    if name is None:
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in DTYPES:
        from ..errors import UserError

        raise UserError(f"--dtype {name!r} is not one of {', '.join(sorted(DTYPES))}")
    if name == "fp8":
        from ..models.fp8 import require_fp8  # one line (e.g. this GPU has no FP8), before any work

        require_fp8(device)
    elif device.type == "cpu" and name != "fp32":
        log.warning("--dtype %s on CPU: half precision is slow and inexact there; using it as asked", name)
    return name


def resolve(cfg, device: torch.device | str):
    """``cfg`` with every per-device default replaced by what will run on ``device`` (same type, frozen)."""
    device = torch.device(device)
    dtype = _dtype(cfg.dtype, device)
    fast, policy = False, None
    if dtype == "fp8":  # the policy written out in full, fast accumulation included
        from ..models.fp8 import DEFAULT_POLICY, FP8Policy

        parsed = FP8Policy.parse(cfg.fp8_policy or os.environ.get("VIRNUCDIST_FP8_POLICY", DEFAULT_POLICY))
        fast = cfg.fp8_fast_accum
        if fast is None:
            fast = parsed.fast_accum if parsed.fast_accum is not None else \
                os.environ.get("VIRNUCDIST_FP8_FAST_ACCUM", "0") == "1"
        policy = str(dataclasses.replace(parsed, fast_accum=bool(fast)))
    workers = cfg.num_workers
    if workers is None:
        from ..launch.dist import workers_per_rank

        workers = workers_per_rank(device)
    return dataclasses.replace(
        cfg, device=device.type, dtype=dtype,
        toks_per_batch=cfg.toks_per_batch or DEFAULT_TOKS.get(device.type, 4096), num_workers=workers,
        flush_every=cfg.flush_every or 1, fp8_fast_accum=bool(fast), fp8_policy=policy)


def numerics(cfg, hdf5: bool = False) -> dict:
    """The resolved fields that change the numbers (for the manifest; ``hdf5``: for an output file's
    attributes, where None is written as "")."""
    vals = {k: getattr(cfg, k) for k in NUMERICS}
    return {k: "" if v is None else v for k, v in vals.items()} if hdf5 else vals
