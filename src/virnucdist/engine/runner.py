"""Running packed batches through a model, surviving out-of-memory.

An out-of-memory error splits the batch in two and lowers a token cap for the
batches after it; the cap grows back (doubling) after a run of clean batches, so
one unlucky batch does not slow the rest of the run. Recovery happens OUTSIDE the
``except`` block: the traceback of the failed forward holds its frames and
activations, and only once it is gone can ``torch.cuda.empty_cache()`` return that
memory. A single record that does not fit even alone is skipped: the runner yields
it with ``None`` as output, counts it and names it, and the run goes on.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator

import torch

from .._testhooks import test_hook
from ..packing import PackedBatch, split_batch

__all__ = ["BatchRunner", "to_host_async"]

log = logging.getLogger("virnucdist")

REGROW_AFTER = 16  # clean batches before the token cap doubles again


class BatchRunner:
    """``runner(batch)`` yields ``(part, output)`` pairs covering every record of ``batch`` in order.

    ``output`` is ``fn(part on the device)``, or ``None`` for a lone record that ran out of memory
    (``skipped`` counts those). ``oom_splits`` counts the splits.
    """

    def __init__(self, fn: Callable[[PackedBatch], object], device: torch.device):
        self.fn, self.device = fn, device
        self.on_tokens: Callable[[int], None] | None = None  # told each forward's tokens (the run's timeline)
        self.cap: int | None = None  # tokens per forward after an OOM; None: no cap
        self.clean = 0
        self.oom_splits = 0
        self.skipped = 0

    def __call__(self, batch: PackedBatch) -> Iterator[tuple[PackedBatch, object]]:
        todo = [batch]
        while todo:
            b = todo.pop()
            if self.cap is not None and b.num_tokens > self.cap and b.num_seqs > 1:
                first, second = split_batch(b)
                todo += [second, first]
                continue
            out = self._forward(b)
            if out is None:  # out of memory; the failed forward's frames are gone by now
                self._release()
                self.clean = 0
                if b.num_seqs < 2:
                    self.skipped += 1
                    log.warning("out of memory on a single record of %d tokens even alone: skipped (counted in "
                                "run_report.json); lower --truncation-seq-length or use a GPU with more memory",
                                b.num_tokens)
                    yield b, None
                    continue
                self.oom_splits += 1
                self.cap = max(1, b.num_tokens // 2)
                log.warning("out of memory on a batch of %d tokens: splitting it, token cap now %d",
                            b.num_tokens, self.cap)
                first, second = split_batch(b)
                todo += [second, first]
                continue
            self._clean_batch()
            if self.on_tokens is not None:
                self.on_tokens(b.num_tokens)
            yield b, out

    def _forward(self, b: PackedBatch):
        """The model's output, or None after an out-of-memory error (returned outside the handler)."""
        try:
            test_hook("forward", tokens=b.num_tokens)
            return self.fn(b.to(self.device, non_blocking=True))
        except torch.OutOfMemoryError:
            pass
        return None

    def _release(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    def _clean_batch(self) -> None:
        if self.cap is None:
            return
        self.clean += 1
        if self.clean >= REGROW_AFTER:
            self.clean = 0
            self.cap *= 2
            log.info("token cap raised to %d after %d clean batches", self.cap, REGROW_AFTER)


def to_host_async(*tensors: torch.Tensor):
    """Device->host copies of several tensors behind one event: ``((host, ...), event or None)``.
    The writer thread waits on the event, so the compute loop never synchronises."""
    if not tensors or tensors[0].device.type != "cuda":
        return tensors, None
    hosts = tuple(t.to("cpu", non_blocking=True) for t in tensors)
    ev = torch.cuda.Event()
    ev.record()
    return hosts, ev
