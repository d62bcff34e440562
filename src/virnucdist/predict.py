"""``torchrun ... -m virnucdist.predict``: VirNucPro's viral read identification in one pass.

The task is :mod:`virnucdist.tasks.predict`; run ``python -m virnucdist.predict --help`` for the flags.
Importing this module never hides the function :func:`virnucdist.predict`: the module itself is
callable with the function's signature.
"""

import sys
import types

from .launch.entry import run_entrypoint
from .tasks.predict import main, predict


class _CallsPredict(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallsPredict

if __name__ == "__main__":
    run_entrypoint(main)
