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
        logging.getLogger("virnucdist").error("failed:\n%s", traceback.format_exc())
        print(f"virnucdist: rank {rank} failed: {type(e).__name__}: {e}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code or 0)
