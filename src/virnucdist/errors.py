"""User-facing errors: one clear line, no traceback, exit code 2.

A leaf module (imports nothing of the package): every user-facing error class of the
library subclasses :class:`UserError` (``FastaError``, ``ModelLoadError``, ...), so the
entrypoints (``launch.entry``, ``cli``) catch this one class.
"""

from __future__ import annotations

__all__ = ["UserError", "PeerFailed", "Interrupted"]


class UserError(RuntimeError):
    """A mistake the user can fix (bad input, wrong flags, missing weights)."""


class PeerFailed(UserError):
    """Another rank (usually rank 0) failed first; that rank reports the reason."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM while a run was computing; ``safe``: records committed on disk (None: not counted).

    The engine raises it (rank 0 counts ``safe`` from the shards once the writers are closed); the
    entrypoint's interrupt line says how many records a rerun resumes from.
    """

    def __init__(self, message: str = "", safe: int | None = None):
        super().__init__(message)
        self.safe = safe
