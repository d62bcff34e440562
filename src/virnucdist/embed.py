"""``torchrun ... -m virnucdist.embed``: embed FASTA/FASTQ records with ESM-2 or DNABERT-S.

The task is :mod:`virnucdist.tasks.embed`; run ``python -m virnucdist.embed --help`` for the flags.
Importing this module never hides the function :func:`virnucdist.embed`: the module itself is
callable with the function's signature.
"""

import sys
import types

from .launch.entry import run_entrypoint
from .tasks.embed import embed, main


class _CallsEmbed(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return embed(*args, **kwargs)


sys.modules[__name__].__class__ = _CallsEmbed

if __name__ == "__main__":
    run_entrypoint(main)
