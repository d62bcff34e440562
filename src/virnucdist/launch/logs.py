"""Rank 0 talks on stderr; every rank also keeps a log file under OUTDIR/logs/."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LOGGER = "virnucdist"


class _LogFile(logging.FileHandler):
    """A rank's log file that stays quiet when it cannot be written (a full disk): the run's own error
    says so in one line; logging's ``--- Logging error ---`` traceback would bury it."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def setup_logging(out_dir: Path | None, rank: int, quiet: bool = False) -> logging.Logger:
    log = logging.getLogger(LOGGER)
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S")
    if rank == 0:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(message)s"))
        h.setLevel(logging.WARNING if quiet else logging.INFO)
        log.addHandler(h)
    if out_dir is not None:
        (out_dir / "logs").mkdir(parents=True, exist_ok=True)
        fh = _LogFile(out_dir / "logs" / f"rank{rank}.log")
        fh.setFormatter(fmt)
        log.addHandler(fh)
    return log

