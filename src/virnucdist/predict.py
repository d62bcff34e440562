"""``torchrun ... -m virnucdist.predict``: VirNucPro read identification (chunk, translate, DNABERT-S +
ESM-2, MLP, consensus) in one pass.

The job itself is :func:`virnucdist.predict` (module :mod:`virnucdist.prediction`);
run ``python -m virnucdist.predict --help`` for the flags.
"""

from .launch.entry import run_entrypoint
from .prediction import main

if __name__ == "__main__":
    run_entrypoint(main)
