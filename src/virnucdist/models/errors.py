"""What goes wrong with a model or a weight file, in one line the user can act on.

Every class here is a :class:`~virnucdist.errors.UserError` (exit code 2, no
traceback). The extra bases keep the Python meaning (``FileNotFoundError``,
``ValueError``) for callers that catch those.
"""

from __future__ import annotations

import re

from ..errors import UserError

__all__ = ["ModelLoadError", "ModelNotFoundError", "CheckpointError", "LayerError", "torch_error_line"]


class ModelLoadError(UserError):
    """Missing or unusable weights; the message says where we looked and what to do."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """The model (a file, a directory, a cache entry) is not where the user pointed."""


class CheckpointError(ModelLoadError, ValueError):
    """The file exists but is not (safely) loadable as weights of this model."""


class LayerError(UserError, ValueError):
    """A representation layer outside the model's range."""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NOISE = ("Weights only load failed", "Check the documentation", "Please file an issue", "In PyTorch 2.6",
          "Re-running `torch.load`", "(1)", "(2)")


def torch_error_line(exc: BaseException, limit: int = 200) -> str:
    """One line of ``torch.load``'s error worth showing: the refused global if there is one,
    else the most specific line; no ANSI codes, no advice to load unsafely."""
    msg = _ANSI.sub("", str(exc))
    m = re.search(r"GLOBAL ([\w.]+)", msg)
    if m:
        return f"it needs the Python global '{m.group(1)}', which is not allowed"
    if "mmap can only be used" in msg:
        return "not a PyTorch checkpoint (a torch.save zip file)"
    if "central directory" in msg or "PytorchStreamReader" in msg:
        return "a damaged or truncated PyTorch checkpoint (copy or download it again)"
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip() and not ln.strip().startswith(_NOISE)]
    line = lines[-1] if lines else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."
