"""User-facing errors: one clear line, no traceback, exit code 2."""

from __future__ import annotations


class UserError(RuntimeError):
    """A mistake the user can fix (bad input, wrong flags, missing weights)."""


class PeerFailed(UserError):
    """Another rank (usually rank 0) failed first; that rank reports the reason."""


def user_error_types() -> tuple[type[BaseException], ...]:
    from .fasta import FastaError
    from .models.loading import ModelLoadError

    return (UserError, FastaError, ModelLoadError, FileNotFoundError, PermissionError, IsADirectoryError)
