"""BatchRunner: out-of-memory recovery frees the failed forward, splits, regrows the cap, skips lone records."""

from __future__ import annotations

import weakref

import numpy as np
import torch

from virnucdist.packing import pack_token_arrays
from virnucdist.engine.runner import REGROW_AFTER, BatchRunner


class GreedyModel:
    """A model whose forward ITSELF allocates an activation per token and runs out of memory above a limit.

    Each call first checks that every activation of an earlier failed forward is gone: the traceback of a
    failed forward holds its frames (and so its activations) alive until the handler is left.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.failed: list[weakref.ref] = []
        self.alive_at_retry = 0
        self.calls: list[int] = []

    def __call__(self, batch):
        self.alive_at_retry += sum(r() is not None for r in self.failed)
        self.calls.append(batch.num_tokens)
        activation = torch.ones(batch.num_tokens, 64)  # "GPU memory" of this forward
        if batch.num_tokens > self.limit:
            self.failed.append(weakref.ref(activation))
            raise torch.OutOfMemoryError(f"forward of {batch.num_tokens} tokens over the limit {self.limit}")
        return activation.sum(1)[batch.cu_seqlens[1:].long() - 1]  # one value per record


def _batch(lengths, start=0):
    arrays = [np.full(n, i + 1, dtype=np.int64) for i, n in enumerate(lengths)]
    return pack_token_arrays(arrays, np.arange(start, start + len(lengths)))


def test_failed_forward_memory_is_released_before_the_retry():
    model = GreedyModel(limit=100)
    runner = BatchRunner(model, torch.device("cpu"))
    parts = list(runner(_batch([30] * 8)))  # 240 tokens: split to 120 (fails again), then 60s
    assert model.failed, "the test model never ran out of memory"
    assert model.alive_at_retry == 0, "a retry started while the failed forward's activations were alive"
    rows = torch.cat([p.rows for p, _ in parts]).tolist()
    assert rows == list(range(8))  # every record once, in order
    assert all(out is not None and out.shape[0] == p.num_seqs for p, out in parts)
    assert runner.oom_splits == 2 and runner.cap == 60


def test_cap_regrows_after_clean_batches():
    model = GreedyModel(limit=100)
    runner = BatchRunner(model, torch.device("cpu"))
    list(runner(_batch([30] * 8)))
    assert runner.cap == 60
    model.limit = 10_000  # memory is back
    for _ in range(REGROW_AFTER):
        list(runner(_batch([30] * 2)))
    assert runner.cap == 120
    calls_before = len(model.calls)
    list(runner(_batch([30] * 4)))  # 120 tokens: one forward under the regrown cap
    assert len(model.calls) == calls_before + 1


def test_lone_record_that_cannot_fit_is_skipped_not_fatal():
    model = GreedyModel(limit=50)
    runner = BatchRunner(model, torch.device("cpu"))
    parts = list(runner(_batch([20, 80, 20])))  # the 80-token record fails alone
    by_rows = {tuple(p.rows.tolist()): out for p, out in parts}
    assert sorted(r for rows in by_rows for r in rows) == [0, 1, 2]
    assert by_rows[(1,)] is None  # skipped
    assert all(out is not None for rows, out in by_rows.items() if rows != (1,))
    assert runner.skipped == 1
    assert model.alive_at_retry == 0
