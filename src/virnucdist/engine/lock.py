"""One run per output directory: a lock file that works on NFS and Lustre, and that a killed run does not keep.

Rank 0 takes ``OUTDIR/.virnucdist.lock`` for the whole job, before anything in the directory is read
or written, and removes it at the end. The file is created with ``O_CREAT | O_EXCL`` (atomic on local
file systems, NFSv3+ and Lustre; no ``flock``/``fcntl``, which NFS clients may not honour) and holds
the owner's host, pid, process start time and start date; while the run lives, a thread refreshes its
modification time every :data:`HEARTBEAT_S` seconds. A second launch finds the file and checks that its
owner is alive: on the same host, the pid exists with the same process start time (a pid reused by
another process is not the owner); on another host, the heartbeat is younger than :data:`STALE_S`. A
live owner: one-line refusal. A dead one (kill -9, a lost node): the lock is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from ..errors import UserError

__all__ = ["RunLock", "DirectoryBusy", "LOCK_NAME", "HEARTBEAT_S", "STALE_S"]

LOCK_NAME = ".virnucdist.lock"
HEARTBEAT_S = 30.0
STALE_S = 180.0  # a lock of another host whose heartbeat is older than this belongs to a dead run


class DirectoryBusy(UserError):
    """Another live run holds the output directory."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(owner: dict, mtime: float) -> bool:
    if owner.get("host") != socket.gethostname():
        return time.time() - mtime < STALE_S
    pid = int(owner.get("pid", 0))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    started = _start_time(pid)
    return started is None or owner.get("start_ticks") in (None, started)


class RunLock:
    """``RunLock(out).acquire()`` or :class:`DirectoryBusy`; ``release()`` removes the file if it is still ours."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_NAME
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "start_ticks": _start_time(os.getpid()),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "token": os.urandom(8).hex()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> "RunLock":
        for _ in range(3):
            if self._create():
                self._start_heartbeat()
                return self
            owner, mtime = self._read()
            if owner is not None and _alive(owner, mtime):
                raise DirectoryBusy(
                    f"{self.path.parent} is in use by another virnucdist run (host {owner.get('host')}, pid "
                    f"{owner.get('pid')}, started {owner.get('started')}); wait for it to finish or use another -o "
                    f"(a lock left by a run that died is taken over by the next run)")
            self._take_over(owner)
        raise DirectoryBusy(f"{self.path.parent}: could not take the run lock {self.path} (another run keeps "
                            f"taking it); use another -o")

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.me, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read(self) -> tuple[dict | None, float]:
        try:
            mtime = self.path.stat().st_mtime
            return json.loads(self.path.read_text() or "null"), mtime
        except FileNotFoundError:
            return None, 0.0
        except (OSError, ValueError):  # half-written by a process killed while creating it
            return {}, 0.0

    def _take_over(self, owner: dict | None) -> None:
        """Remove a dead run's lock (only if it is still that run's: a rename aside, then a check)."""
        if owner is None:
            return
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{self.me['token']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            again = json.loads(aside.read_text() or "null")
        except (OSError, ValueError):
            again = {}
        if again and owner and again.get("token") != owner.get("token"):  # a live run took it meanwhile: give back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        aside.unlink(missing_ok=True)

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    os.utime(self.path)
                except OSError:
                    pass

        self._thread = threading.Thread(target=beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        owner, _ = self._read()
        if owner and owner.get("token") == self.me["token"]:
            self.path.unlink(missing_ok=True)
