"""Run an entrypoint so that every failure is one line on stderr.

* A user mistake: ``virnucdist: error: MESSAGE`` from rank 0 only (the other
  ranks log it to their file), exit code 2.
* A crash: ``virnucdist: rank N failed: ERROR (traceback in OUTDIR/logs/rankN.log)``
  from the rank that crashed, exit code 1; the traceback goes to its log file
  (to stderr only when no log file is open yet).
* A rank whose collective broke because another rank died (gloo "connection
  closed by peer", NCCL errors): ``virnucdist: rank N stopped: ...`` without a
  traceback, exit code 1; the rank that failed first prints the "failed" line.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Callable

from ..errors import user_error_types


def _one_line(text: str) -> str:
    return " ".join(ln.strip() for ln in text.splitlines() if ln.strip())


def _peer_lost(e: BaseException) -> bool:
    """The error came out of a torch.distributed collective: another rank most likely went away."""
    if not isinstance(e, RuntimeError):  # DistBackendError, DistNetworkError, gloo/NCCL RuntimeErrors
        return False
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and "torch/distributed/" in frames[-1].filename.replace(os.sep, "/")


def run_entrypoint(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    rank = int(os.environ.get("RANK", "0"))
    try:
        code = main(argv)
    except user_error_types() as e:
        msg = _one_line(str(e))
        if rank == 0:
            print(f"virnucdist: error: {msg}", file=sys.stderr)
        else:
            logging.getLogger("virnucdist").error("%s", msg)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except SystemExit:
        raise
    except BaseException as e:
        log = logging.getLogger("virnucdist")
        files = [h for h in log.handlers if isinstance(h, logging.FileHandler)]
        tb = traceback.format_exc()
        if files:  # the traceback goes to this rank's log file, not to the console
            record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "failed:\n%s", (tb,), None)
            for h in files:
                h.handle(record)
        else:
            sys.stderr.write(tb)
        where = f" (traceback in {files[0].baseFilename})" if files else ""
        if _peer_lost(e):
            print(f"virnucdist: rank {rank} stopped: lost another rank in a collective ({type(e).__name__}); "
                  f"the rank that failed first reports why{where}", file=sys.stderr)
        else:
            print(f"virnucdist: rank {rank} failed: {type(e).__name__}: {_one_line(str(e))}{where}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code or 0)
