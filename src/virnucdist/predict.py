"""``torchrun ... -m virnucdist.predict``: VirNucPro's viral read identification in one pass.

The task is :mod:`virnucdist.tasks.predict`; run ``python -m virnucdist.predict --help`` for the flags.
Importing this module never hides the function :func:`virnucdist.predict`: the module itself is
callable with the function's signature.
"""

from .launch.entry import callable_module, run_entrypoint
from .tasks.predict import main, predict

callable_module(__name__, predict)

if __name__ == "__main__":
    run_entrypoint(main)
