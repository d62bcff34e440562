"""``torchrun ... -m virnucdist.embed``: embed FASTA/FASTQ records with ESM-2 or DNABERT-S.

The task is :mod:`virnucdist.tasks.embed`; run ``python -m virnucdist.embed --help`` for the flags.
Importing this module never hides the function :func:`virnucdist.embed`: the module itself is
callable with the function's signature.
"""

from .launch.entry import callable_module, run_entrypoint
from .tasks.embed import embed, main

callable_module(__name__, embed)

if __name__ == "__main__":
    run_entrypoint(main)
