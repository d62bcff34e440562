"""The engine: the run configuration (resolved once), the rank loop (run directory and manifest, resume,
partition, windows, finalize) and the batch runner (out-of-memory splitting). Tasks plug into it; it
never imports them."""

from .config import DEFAULT_TOKS, RunConfig, add_run_arguments, resolve
from .loop import WINDOW_BATCHES, RunResult, run, run_main

__all__ = ["run", "run_main", "RunResult", "RunConfig", "add_run_arguments", "resolve", "DEFAULT_TOKS",
           "WINDOW_BATCHES"]
