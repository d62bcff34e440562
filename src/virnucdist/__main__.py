"""``python -m virnucdist``: the ``virnucdist`` console script (``embed``, ``predict``, ``chunk``, ...)."""

from .cli import main

raise SystemExit(main())
