"""TEST-ONLY fault injection, driven by environment variables (a no-op when none is set).

The library calls :func:`test_hook` at a few named points so that tests can kill or
crash a real process exactly there; nothing else in the library depends on it.
A leaf module (no imports from the package) so that the small utilities
(``writers``, ``runner``) can call it without importing the engine.

Points (where the library calls the hook):

``index``     ``SequenceIndex.save``: ``index.tmp*`` written, not yet renamed
``batch``     the engine's loop, after each window (``rank``, ``batches`` = windows done on this rank)
``flush``     ``ShardWriter``: a flush's rows written and flushed,
              ``committed`` not yet raised
``finalize``  ``finalize_embeddings``: ``embeddings.h5.tmp`` complete, not yet renamed
``forward``   ``runner.BatchRunner``, before each model forward (``tokens`` = the batch's tokens)

Variables:

``VIRNUCDIST_TEST_KILL_AT=POINT[:N]``   SIGKILL this process the N-th time (default 1st) it reaches POINT
``VIRNUCDIST_TEST_KILL_RANK=R``        with KILL_AT: only the process of torchrun rank R (``RANK``) kills itself
``VIRNUCDIST_TEST_OOM_ABOVE=T``        a forward of more than T tokens raises ``torch.OutOfMemoryError``
``VIRNUCDIST_TEST_BATCH_DELAY_S=S``     sleep S seconds after each batch (so a test can kill mid-run)
``VIRNUCDIST_TEST_CRASH_RANK=R`` with ``VIRNUCDIST_TEST_CRASH_AFTER_BATCHES=N``
    rank R raises ``RuntimeError("injected crash")`` after its N-th batch, only in the
    first attempt (``TORCHELASTIC_RESTART_COUNT`` 0), so a torchrun restart succeeds.
"""

from __future__ import annotations

import os
import signal
import time

__all__ = ["test_hook", "active_test_hooks"]

PREFIX = "VIRNUCDIST_TEST_"


def active_test_hooks() -> dict[str, str]:
    """The fault-injection variables set in this process (recorded in the run report)."""
    return {k: v for k, v in os.environ.items() if k.startswith(PREFIX) and v}

_reached: dict[str, int] = {}


def test_hook(point: str, *, rank: int = 0, batches: int = 0, tokens: int = 0) -> None:
    """Test-only: act on the ``VIRNUCDIST_TEST_*`` variables at ``point`` (see the module docstring)."""
    env = os.environ
    kill_at = env.get("VIRNUCDIST_TEST_KILL_AT")
    if kill_at:
        name, _, nth = kill_at.partition(":")
        only = env.get("VIRNUCDIST_TEST_KILL_RANK")
        if name == point and (not only or only == env.get("RANK", "0")):
            _reached[point] = _reached.get(point, 0) + 1
            if _reached[point] == int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)
    if point == "forward":
        oom_above = int(env.get("VIRNUCDIST_TEST_OOM_ABOVE") or 0)
        if oom_above and tokens > oom_above:
            import torch

            raise torch.OutOfMemoryError("injected out-of-memory (VIRNUCDIST_TEST_OOM_ABOVE)")
        return
    if point != "batch":
        return
    delay = float(env.get("VIRNUCDIST_TEST_BATCH_DELAY_S") or 0)
    if delay:
        time.sleep(delay)
    crash_rank = env.get("VIRNUCDIST_TEST_CRASH_RANK")
    if (crash_rank is not None and int(crash_rank) == rank
            and batches == int(env.get("VIRNUCDIST_TEST_CRASH_AFTER_BATCHES") or 0)
            and int(env.get("TORCHELASTIC_RESTART_COUNT") or 0) == 0):
        raise RuntimeError("injected crash")


test_hook.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, wherever it is imported
