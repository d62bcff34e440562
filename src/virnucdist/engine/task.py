"""What a task tells the engine: the contract between :mod:`virnucdist.engine` and a task.

The engine owns the rank loop (output directory and manifest, index, resume scan,
dedup, partition, windows, DataLoader, batch runner, shard writer, finalize, run
report). A task says only what is specific to it:

* ``identity()``: what must match for an earlier run's shards to be reused (models, options);
* ``costs(index)``: tokens each record will cost (the partition balances them);
* ``check(index)``: refuse an input the task cannot use (e.g. DNA given to a protein model), before any work;
* ``prepare(ctx, index)``: load models on this rank's device, check the input suits them;
* ``schema()``: the columns of a record's result (:class:`~virnucdist.writers.ShardSchema`);
* ``block_maker()``: a picklable callable run in DataLoader workers that turns a window of records
  into a :class:`Block` of packed batches (pure: the same window gives the same block);
* ``run_block(block)``: the GPU side (through the task's :class:`~virnucdist.engine.runner.BatchRunner` s, listed in
  ``runners`` for the report); returns the block's results as writer parts;
* ``finalize(out, index, results, plan)``: rank 0 writes the task's final files from the results.

A user's own task is one small file implementing these (see ``examples/custom_pipeline.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

__all__ = ["Block", "Task", "RunPlan", "Counters"]


@dataclass
class Block:
    """A window of records ready for the device: everything the main loop needs, nothing it must remember.

    ``rows``: the window's record indices (ascending); ``batches``: what ``run_block`` consumes (e.g.
    :class:`~virnucdist.packing.PackedBatch` whose ``rows`` are positions in ``rows``); ``tokens``: model
    tokens in the block (for throughput); ``counters``: numbers summed over the run (e.g.
    ``truncated``) and ``examples``: a few record ids per counter, for messages.
    """

    number: int
    rows: np.ndarray
    batches: list
    tokens: int
    counters: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    payload: Any = None  # task-specific host data the GPU side needs (e.g. frame tables)

    def pin_memory(self) -> "Block":
        self.batches = [b.pin_memory() for b in self.batches]
        return self


@dataclass
class RunPlan:
    """What the engine decided for this run, handed to ``finalize``.

    ``rows``: records with a result (input order); ``source[i]``: the record whose result ``rows[i]``
    takes (itself, or the first record with the same sequence when dedup is on); ``empty``: records
    with no sequence; ``bad``: records skipped with a reason (non-finite output, out of memory).
    """

    rows: np.ndarray
    source: np.ndarray
    empty: np.ndarray
    bad: dict[int, str]
    fingerprint: str


class Counters:
    """Named counters with a few example ids each, summed over blocks and ranks."""

    def __init__(self, max_examples: int = 5):
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self.max_examples = max_examples

    def add(self, counts: dict[str, int], examples: dict[str, list[str]] | None = None) -> None:
        for k, v in counts.items():
            self.counts[k] = self.counts.get(k, 0) + int(v)
        for k, ids in (examples or {}).items():
            have = self.examples.setdefault(k, [])
            have += ids[: self.max_examples - len(have)]

    def merge(self, others: Sequence["Counters"]) -> "Counters":
        out = Counters(self.max_examples)
        for c in others:
            out.add(c.counts, c.examples)
        return out


class Task(Protocol):
    """See the module docstring. ``config`` is a :class:`~virnucdist.engine.config.RunConfig` (a subclass
    with the task's own fields): the engine replaces it by its resolved copy (dtype, token budget,
    workers, ... as they run on this rank's device) before the manifest is written, so ``prepare`` and
    the rest read what runs."""

    name: str
    config: Any
    outputs: tuple[str, ...]  # final files/folders under OUTDIR (removed by --overwrite)
    dedup: bool  # whether identical sequences may share one computation

    def identity(self) -> dict: ...

    def costs(self, index) -> np.ndarray: ...

    def check(self, index) -> None: ...

    def prepare(self, ctx, index) -> None: ...

    def schema(self): ...

    def block_maker(self) -> Callable[[Any, int, np.ndarray], Block]: ...

    runners: list  # its BatchRunners (out-of-memory splits and skips are reported)

    def run_block(self, block: Block) -> list: ...

    def finalize(self, out: Path, index, results, plan: RunPlan) -> dict: ...
