"""``torchrun ... -m virnucdist.train``: train VirNucPro's classifier for your reads and your ESM-2.

The task is :mod:`virnucdist.tasks.train`; run ``python -m virnucdist.train --help`` for the flags.
The module itself is callable with the signature of :func:`virnucdist.tasks.train.train`.
"""

from .launch.entry import callable_module, run_entrypoint
from .tasks.train import main, train

callable_module(__name__, train)

if __name__ == "__main__":
    run_entrypoint(main)
