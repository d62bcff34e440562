"""Run an entrypoint so that every failure is one line on stderr, and that line is the last one.

* A user mistake (:class:`~virnucdist.errors.UserError`, a missing or unreadable file):
  ``virnucdist: error: MESSAGE`` from rank 0 only (the other ranks log it to their file),
  exit code 2.
* Ctrl-C (SIGINT) or SIGTERM (torchrun stopping the ranks, Slurm's ``scancel``, a dead
  launcher): ``virnucdist: interrupted; rerun the same command to resume; N records are
  safe`` (``interrupted (SIGTERM); ...``) from rank 0 (N from the :class:`~virnucdist.errors.Interrupted` the job raised),
  no traceback, exit code 130 (SIGINT) or 143 (SIGTERM).
* A crash: ``virnucdist: rank N failed: ERROR (traceback in OUTDIR/logs/rankN.log)``
  from the rank that crashed, exit code 1; the traceback goes to its log file
  (to stderr only when no log file is open yet).
* A rank whose collective broke because another rank died (gloo "connection
  closed by peer", NCCL errors): ``virnucdist: rank N stopped: ...`` without a
  traceback, exit code 1; the rank that failed first prints the "failed" line.

Under torchrun the line also goes to torchrun's error file (``TORCHELASTIC_ERROR_FILE``, what
``torch.distributed.elastic.multiprocessing.errors.record`` writes), so torchrun's closing
"Root Cause" summary shows it instead of a Python traceback. torchrun itself then prints its
own ``ChildFailedError`` traceback and summary when it exits; a rank cannot stop that, so the
rank that reported the failure leaves a tiny detached process that prints the same line
again once the launcher has exited: the one clear line is the last one on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Callable

from ..errors import UserError

__all__ = ["run_entrypoint", "callable_module", "USER_ERRORS"]

#: what the entrypoints report as the user's mistake (one line, exit code 2)
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, PermissionError, IsADirectoryError)

_signalled: int | None = None  # the first SIGINT/SIGTERM this process got, while an entrypoint runs
_signalled_at = 0.0
_rank = 0

log = logging.getLogger("virnucdist")


def callable_module(name: str, fn: Callable) -> None:
    """Make the module ``name`` callable as ``fn``: importing the entrypoint module ``virnucdist.embed``
    sets the package attribute ``embed`` to the module, which then still works as the function."""

    class _Calls(type(sys.modules[name])):
        def __call__(self, *args, **kwargs):
            return fn(*args, **kwargs)

    _Calls.__name__ = f"calls_{fn.__name__}"
    sys.modules[name].__class__ = _Calls


def _one_line(text: str) -> str:
    return " ".join(ln.strip() for ln in text.splitlines() if ln.strip())


def _peer_lost(e: BaseException) -> bool:
    """The error came out of a torch.distributed collective: another rank most likely went away."""
    if not isinstance(e, RuntimeError):  # DistBackendError, DistNetworkError, gloo/NCCL RuntimeErrors
        return False
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and "torch/distributed/" in frames[-1].filename.replace(os.sep, "/")


def _safe_records(e: BaseException) -> str:
    """What an interrupt leaves: the job's count (an :class:`~virnucdist.errors.Interrupted` it raised), if any."""
    safe = getattr(e, "safe", None)
    return f"{int(safe):,} records are safe" if safe is not None else "records already written are safe"


def _on_signal(signum: int, frame) -> None:
    """SIGINT/SIGTERM: unwind the job (its ``finally`` blocks close the writers) as an interrupt.

    The same signal often arrives twice at once (to the process and to its group: ``timeout``,
    Slurm): a repeat within a second is ignored. A later one (a second Ctrl-C) stops at once.
    """
    global _signalled, _signalled_at
    now = time.monotonic()
    if _signalled is not None:
        if now - _signalled_at < 1.0:
            return
        if _rank == 0:
            os.write(2, b"virnucdist: interrupted again; stopping now; rerun the same command to resume\n")
        os._exit(128 + signum)
    _signalled, _signalled_at = signum, now
    # DataLoader workers die of the same signal (same process group); torch's SIGCHLD handler
    # would turn that into "DataLoader worker ... killed by signal" while the job unwinds
    if hasattr(signal, "SIGCHLD"):
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _install_handlers() -> dict[int, object]:
    old = {}
    if sys.platform == "win32":
        return old
    if threading.current_thread() is threading.main_thread():
        old[signal.SIGCHLD] = signal.getsignal(signal.SIGCHLD)  # _on_signal may reset it: put it back after
    for sig in (signal.SIGINT, signal.SIGTERM):
        cur = signal.getsignal(sig)
        # leave a handler someone else installed alone (and SIGINT ignored by a shell's `&`)
        if cur in (signal.default_int_handler, signal.SIG_DFL):
            try:
                old[sig] = signal.signal(sig, _on_signal)
            except ValueError:  # not the main thread: keep Python's defaults
                break
    return old


def _restore_handlers(old: dict[int, object]) -> None:
    for sig, h in old.items():
        if h is not None:
            signal.signal(sig, h)


#: seconds a Ctrl-C/SIGTERM may wait for the main thread to run its handler (it cannot while it is inside
#: one long C call, e.g. a forward of a large batch on CPU) before the process stops at once
STOP_GRACE_S = 5.0


class _StopWatch:
    """Acts on SIGINT/SIGTERM even while the main thread is stuck in C code.

    Python runs signal handlers only between bytecodes of the main thread, so a Ctrl-C during a forward
    that takes 95 s acted 95 s later. The C-level handler writes each signal's number to the wakeup fd
    at once (``signal.set_wakeup_fd``); this thread reads it, and if the Python handler has not run
    :data:`STOP_GRACE_S` seconds later, prints the interrupt line (rank 0) and ends the process: the
    shards' commit protocol keeps every committed record (the same as a kill)."""

    def __init__(self):
        self.done = threading.Event()
        self.old_fd = None
        self.r = self.w = -1
        if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
            return
        self.r, self.w = os.pipe()
        os.set_blocking(self.w, False)
        try:
            self.old_fd = signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        except (ValueError, OSError):
            os.close(self.r), os.close(self.w)
            self.r = self.w = -1
            return
        threading.Thread(target=self._watch, name="stop-watch", daemon=True).start()

    def _watch(self) -> None:
        try:
            self._wait()
        finally:
            os.close(self.r)

    def _wait(self) -> None:
        wanted = {int(signal.SIGINT), int(signal.SIGTERM)}
        while not self.done.is_set():
            try:
                data = os.read(self.r, 64)
            except OSError:
                return
            if not data:
                return
            got = [b for b in data if b in wanted]
            if not got:
                continue
            if self.done.wait(STOP_GRACE_S) or _signalled is not None:  # the main thread is unwinding
                return
            if _rank == 0:
                os.write(2, (f"virnucdist: interrupted; the running batch did not yield within {STOP_GRACE_S:g} s, "
                             f"stopping now; rerun the same command to resume; records already committed are "
                             f"safe\n").encode())
            os._exit(128 + got[0])

    def close(self) -> None:
        self.done.set()
        if self.r < 0:
            return
        try:
            signal.set_wakeup_fd(self.old_fd if self.old_fd is not None else -1)
        except (ValueError, OSError):
            pass
        os.close(self.w)  # the reader sees EOF (or EBADF) and ends


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def _write_error_file(line: str) -> None:
    """torchrun's error file for this rank: its summary shows ``line`` instead of a traceback."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {"message": {"message": line, "extraInfo": {"py_callstack": line, "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w") as fh:
            json.dump(data, fh)
    except OSError:
        pass


# A fresh interpreter (no inherited CUDA handles, no threads): wait for the launcher to exit, then
# print the line on the stderr it shares with it. pidfd wakes at once; /proc polling is the fallback.
_LAST_WORD = r"""
import os, select, sys, time
pid, line, limit = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
def gone():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            pass
        return False
end = time.monotonic() + limit
try:
    fd = os.pidfd_open(pid)
    select.select([fd], [], [], limit)
except (AttributeError, OSError):
    while not gone() and time.monotonic() < end:
        time.sleep(0.05)
if gone():
    os.write(2, (line + "\n").encode())
"""


def _last_word(line: str, launcher: int, limit_s: float = 120.0) -> None:
    """After the launcher (torchrun) exits and prints its own report, print ``line`` once more."""
    if launcher <= 1 or os.getppid() != launcher:
        return
    try:
        subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAST_WORD, str(launcher), line, str(limit_s)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        pass


def _restarts_left() -> bool:
    env = os.environ
    return int(env.get("TORCHELASTIC_RESTART_COUNT") or 0) < int(env.get("TORCHELASTIC_MAX_RESTARTS") or 0)


def run_entrypoint(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run ``main(argv)`` and exit with its code; every failure becomes one line (see the module doc)."""
    global _signalled, _rank
    rank = _rank = int(os.environ.get("RANK", "0"))
    launcher = os.getppid()
    _signalled = None
    old = _install_handlers()
    watch = _StopWatch() if old else None
    line, last_word = None, False

    def orphaned(wait_s: float = 0.0) -> bool:
        # the parent-death SIGTERM can come a moment before this process is handed to a new parent
        # (the launcher's thread that started us died first): give getppid() that moment
        end = time.monotonic() + wait_s
        while os.getppid() == launcher and time.monotonic() < end:
            time.sleep(0.02)
        return _under_torchrun() and os.getppid() != launcher

    try:
        code = main(argv)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the point of this function
        if _signalled is not None or isinstance(e, KeyboardInterrupt):
            sig = _signalled or signal.SIGINT
            code = 128 + int(sig)
            what = "interrupted" if sig == signal.SIGINT else f"interrupted ({signal.Signals(sig).name})"
            if sig == signal.SIGTERM and _under_torchrun() and orphaned(wait_s=1.0):
                what = f"interrupted ({signal.Signals(sig).name}: the torchrun launcher is gone)"
            line = f"virnucdist: {what}; rerun the same command to resume; {_safe_records(e)}"
            # torchrun forwards Ctrl-C and never restarts after it; a SIGTERM comes from torchrun
            # itself (another rank failed: that rank has the last word) or from the scheduler
            last_word = rank == 0 and sig == signal.SIGINT
            if rank != 0:
                _log_only(line)
                _write_error_file(line)
                line = None
        elif isinstance(e, USER_ERRORS):
            msg = _one_line(str(e)) or type(e).__name__
            if getattr(e, "say_safe_records", False):  # a full disk: the job's count over all ranks (rank 0 scans)
                msg = f"{msg}; {_safe_records(e)}"
            line = f"virnucdist: error: {msg}"
            code, last_word = 2, rank == 0 and not _restarts_left()
            if rank != 0:
                _log_only(msg)
                _write_error_file(line)
                line = None
        else:
            where = _log_traceback(traceback.format_exc())
            if _peer_lost(e):
                line = (f"virnucdist: rank {rank} stopped: lost another rank in a collective ({type(e).__name__}); "
                        f"the rank that failed first reports why{where}")
            else:
                line = f"virnucdist: rank {rank} failed: {type(e).__name__}: {_one_line(str(e))}{where}"
                last_word = not _restarts_left()
            code = 1
    finally:
        _restore_handlers(old)
        if watch is not None:
            watch.close()
    if line is not None:
        print(line, file=sys.stderr)
        _write_error_file(line)
        if last_word and _under_torchrun():
            _last_word(line, launcher)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe: nothing more can be said
        pass
    if code and orphaned():
        # no launcher to report to; torch's teardown would try to reach its store (seconds, or a hang)
        os._exit(code)
    sys.exit(code or 0)


def _log_only(msg: str) -> None:
    """To this rank's log file (ranks other than 0 do not talk on the console)."""
    if any(isinstance(h, logging.FileHandler) for h in log.handlers):
        log.error("%s", msg)


def _log_traceback(tb: str) -> str:
    """The traceback goes to this rank's log file, not to the console; returns " (traceback in FILE)"."""
    files = [h for h in log.handlers if isinstance(h, logging.FileHandler)]
    if not files:
        sys.stderr.write(tb)
        return ""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "failed:\n%s", (tb,), None)
    for h in files:
        h.handle(record)
    return f" (traceback in {files[0].baseFilename})"
