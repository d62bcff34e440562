"""The engine: the rank loop (run directory and manifest, resume, partition, windows, finalize)
and the batch runner (out-of-memory splitting). Tasks plug into it; it never imports them."""

from .loop import DEFAULT_TOKS, WINDOW_BATCHES, RunResult, run, run_main

__all__ = ["run", "run_main", "RunResult", "DEFAULT_TOKS", "WINDOW_BATCHES"]
