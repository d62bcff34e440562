"""User-facing errors: one clear line, no traceback, exit code 2.

Every error a user can fix subclasses :class:`UserError` (model loading:
``virnucdist.models.errors``), so this module imports nothing of the package.
"""

from __future__ import annotations


class UserError(RuntimeError):
    """A mistake the user can fix (bad input, wrong flags, missing weights)."""


class PeerFailed(UserError):
    """Another rank (usually rank 0) failed first; that rank reports the reason."""


def user_error_types() -> tuple[type[BaseException], ...]:
    # FastaError (fasta.py) is a ValueError until it subclasses UserError; then this
    # function becomes ``(UserError, PermissionError, IsADirectoryError)``, or goes.
    from .fasta import FastaError

    return (UserError, FastaError, FileNotFoundError, PermissionError, IsADirectoryError)
