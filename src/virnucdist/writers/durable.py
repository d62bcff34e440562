"""Files and durability: HDF5 files without file locking, fsync, atomic renames, a full disk."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import h5py

from ..errors import UserError

_FSYNC = True  # benchmarks/finalize.py turns it off to measure what fsync costs; nothing else may


def _open(path: str | Path, mode: str = "r", **kw) -> h5py.File:
    """Every HDF5 file of this module: no HDF5 file locking (one writer per file by design; NFS/Lustre)."""
    return h5py.File(path, mode, locking=False, **kw)


def _fsync_fd(fd: int) -> None:
    if _FSYNC:
        os.fsync(fd)


def fsync_file(path: str | Path) -> None:
    """fsync a file's data to disk (after writing it through another handle)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _fsync_fd(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """fsync a directory, so that names created or renamed in it survive a crash.

    Filesystems that cannot fsync a directory (some network mounts answer EINVAL) are skipped.
    """
    if not _FSYNC:
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def replace_durably(tmp: str | Path, final: str | Path) -> None:
    """Atomically rename a complete ``tmp`` to ``final``: fsync its data, rename, fsync the directory."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


class DiskFullError(UserError):
    """The filesystem of the output directory is full; what was committed is safe. The entrypoint adds how
    many records are safe over all ranks (rank 0 counts every shard's committed records), never one rank's."""

    say_safe_records = True


def _is_disk_full(e: BaseException) -> bool:
    return ((isinstance(e, OSError) and e.errno == errno.ENOSPC)
            or "errno = 28" in str(e) or "No space left on device" in str(e))


def _abandon(f: h5py.File, fd: int | None) -> None:
    """Close ``f`` after a failed write without h5py's ``__dealloc__`` tracebacks or a crash at exit.

    HDF5 cannot close a file whose dirty cache it cannot write (disk full): the close fails, the
    id stays open, and h5py later prints ``Exception ignored in __dealloc__`` and may segfault at
    interpreter exit. Everything committed is already on disk (flushed and fsync'd), so the
    unflushed rest is worthless: point the file descriptor at ``/dev/null`` and close normally.
    """
    if fd is not None:
        try:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, fd)
            os.close(null)
        except OSError:
            pass
    try:
        f.close()
    except Exception:
        pass
