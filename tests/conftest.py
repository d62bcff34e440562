"""Shared fixtures for the test suite.

Shared plain helpers are modules beside this file (tests/ is on pytest's path): ``_helpers``
(``MODEL``, ``AA``, ``clean_env()`` for subprocesses), ``_formats`` (writers of the real on-disk
model formats), ``_predict_data`` and ``_train_data`` (small predict/train set-ups)."""

from __future__ import annotations

from pathlib import Path

import pytest

_REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's ``shared`` folder: ``../shared`` beside the repo (as CI lays it out), else /work/shared."""
    for candidate in (_REPO_ROOT.parent / "shared", Path("/work/shared")):
        if (candidate / "spec").is_dir() and (candidate / "data").is_dir():
            return candidate
    raise RuntimeError(
        f"shared folder not found: looked for {_REPO_ROOT.parent / 'shared'} and /work/shared; "
        "put the project's shared/ (spec/, data/) beside the repository clone"
    )
