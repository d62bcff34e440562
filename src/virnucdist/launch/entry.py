"""Run an entrypoint so user mistakes print one line (rank 0 only) and exit 2."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from typing import Callable

from ..errors import user_error_types


def run_entrypoint(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    rank = int(os.environ.get("RANK", "0"))
    try:
        code = main(argv)
    except user_error_types() as e:
        if rank == 0:
            print(f"virnucdist: error: {e}", file=sys.stderr)
        else:
            logging.getLogger("virnucdist").error("%s", e)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except SystemExit:
        raise
    except BaseException as e:
        log = logging.getLogger("virnucdist")
        log.error("failed:\n%s", traceback.format_exc())
        files = [h.baseFilename for h in log.handlers if isinstance(h, logging.FileHandler)]
        where = f" (traceback in {files[0]})" if files else ""
        print(f"virnucdist: rank {rank} failed: {type(e).__name__}: {e}{where}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code or 0)
