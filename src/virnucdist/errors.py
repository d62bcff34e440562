"""User-facing errors: one clear line, no traceback, exit code 2.

A leaf module (imports nothing of the package): every user-facing error class of the
library subclasses :class:`UserError` (``FastaError``, ``ModelLoadError``, ...), so the
entrypoints (``launch.entry``, ``cli``) catch this one class.
"""

from __future__ import annotations

__all__ = ["UserError", "PeerFailed"]


class UserError(RuntimeError):
    """A mistake the user can fix (bad input, wrong flags, missing weights)."""


class PeerFailed(UserError):
    """Another rank (usually rank 0) failed first; that rank reports the reason."""
