"""What many tests share: the small model they run, the protein alphabet, and a clean environment for
subprocesses (torchrun, entrypoints). Tests import it as ``_helpers`` (tests/ is on pytest's path)."""

from __future__ import annotations

import os

MODEL = "esm2_t6_8M_UR50D"  # the smallest ESM-2 (random weights in tests: --random-init)
AA = tuple("ACDEFGHIKLMNPQRSTVWY")  # the 20 amino acids

_RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**extra: str) -> dict:
    """This process's environment for a subprocess: no rank variables, torchrun state or test hooks
    (``VIRNUCDIST_TEST_*``) inherited; one OpenMP thread, unbuffered output; then ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in _RANK_VARS and not k.startswith(("VIRNUCDIST_TEST_", "TORCHELASTIC_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env
