"""``torchrun ... -m virnucdist.embed``: embed FASTA records with ESM-2 or DNABERT-S.

The job itself is :func:`virnucdist.embed` (module :mod:`virnucdist.embedding`);
run ``python -m virnucdist.embed --help`` for the flags.
"""

from .embedding import main
from .launch.entry import run_entrypoint

if __name__ == "__main__":
    run_entrypoint(main)
