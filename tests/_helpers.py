"""What many tests share: the small model they run, the protein alphabet, a clean environment for
subprocesses (torchrun, entrypoints), a torchrun launch that never outlives its test, and file hashes. Tests import it as ``_helpers`` (tests/ is on pytest's path)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

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


def torchrun(module: str, args: list[str], *, nproc: int = 2, timeout: float = 240, **env: str
             ) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=NPROC -m MODULE ARGS`` in its own process group (killed
    whole if it outlives ``timeout``), with :func:`clean_env` plus ``env``; output captured."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", module,
           *args]
    p = subprocess.Popen(cmd, env=clean_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    out, err = finish(p, timeout)
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def finish(p: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """``p.communicate(timeout)``; if ``p`` (started with ``start_new_session=True``) is still running
    after it, whatever the reason, its whole process group is killed."""
    try:
        return p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie or a dead entry has exited, reaped or not by its adopter)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in "ZX"


def sha256(path: Path) -> str:
    """A file's SHA-256 (hex): what "the same bytes" is checked with."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
