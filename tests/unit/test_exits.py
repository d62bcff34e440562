"""How a run ends when it does not finish: Ctrl-C, SIGTERM, a closed pipe, torchrun's error file.

Interrupts are real signals sent to a real ``python -m virnucdist.embed`` slowed down by the
test-only ``VIRNUCDIST_TEST_BATCH_DELAY_S`` hook; the exit codes are documented in the README
("Exit codes"). The torchrun side (the last line under torchrun, a killed launcher) is in
tests/multigpu/test_launcher.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virnucdist.errors import UserError
from virnucdist.data.fasta import FastaError, write_fasta
from virnucdist.inspection import describe
from virnucdist.launch import entry
from virnucdist.errors import Interrupted
from virnucdist.launch.entry import run_entrypoint
from virnucdist.models.loading import ModelLoadError
from _helpers import AA, MODEL, alive, clean_env

INTERRUPTED = re.compile(r"^virnucdist: interrupted( \(SIGTERM\))?; rerun the same command to resume; "
                         r"(?:([\d,]+) records are safe|records already written are safe)$")


def _last_line(text: str) -> str:
    return [ln for ln in text.splitlines() if ln.strip()][-1]


def _wait_for(path: Path, needle: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.is_file() and needle in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} never appeared in {path}")


@pytest.fixture(scope="module")
def fasta(tmp_path_factory) -> Path:
    import random

    rng = random.Random(3)
    path = tmp_path_factory.mktemp("exits") / "prot.fa"
    write_fasta(path, [(f"q{i:03d}", "".join(rng.choice(AA) for _ in range(rng.randint(5, 30)))) for i in range(150)])
    return path


def _embed_cmd(fasta: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "virnucdist.embed", str(fasta), "--model", MODEL, "--random-init", "-o", str(out),
            "--device", "cpu", "--toks-per-batch", "96", "--window-records", "4", "--num-workers", "1"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_is_one_line_and_resumable(fasta, tmp_path, sig):
    """A real run gets SIGINT (Ctrl-C) or SIGTERM (scancel) mid-embedding: one line, 130/143, resumable."""
    out = tmp_path / "out"
    p = subprocess.Popen(_embed_cmd(fasta, out), env=clean_env(VIRNUCDIST_TEST_BATCH_DELAY_S="0.3"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / "logs" / "rank0.log", "to compute on")  # in the batch loop (with its DataLoader worker)
        time.sleep(2.0)  # a few batches, some committed
        p.send_signal(sig)
        _, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + sig, f"rc {p.returncode}\n{stderr}"
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    m = INTERRUPTED.match(_last_line(stderr))
    assert m, stderr
    assert bool(m.group(1)) == (sig == signal.SIGTERM)
    d = describe(out)
    safe = d["shards"]["committed_records"]
    assert d["state"] == f"resumable: {safe} of 150 records committed" and not d["shards"]["unreadable"]
    if m.group(2):  # the job counted what is safe (the engine raises errors.Interrupted(safe=N))
        assert int(m.group(2).replace(",", "")) == safe
    if sig == signal.SIGINT:  # the same command finishes the run from the shards
        done = subprocess.run(_embed_cmd(fasta, out), env=clean_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        rep = json.loads((out / "run_report.json").read_text())
        assert rep["summary"]["resumed_records"] == safe and rep["summary"]["sequences"] == 150 - safe


def _entry(main, **env) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        run_entrypoint(main, [])
    return exit_.value.code, err.getvalue()


def test_interrupt_names_the_jobs_safe_count_in_process():
    def main(argv):
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered as an interrupt at the next bytecode
            time.sleep(5)
        except KeyboardInterrupt as e:  # as the engine does once its writers are closed
            raise Interrupted(str(e), safe=12345) from None
        raise AssertionError("SIGTERM did not interrupt")

    before = signal.getsignal(signal.SIGTERM)
    code, err = _entry(main)
    assert code == 143 and err.strip() == \
        "virnucdist: interrupted (SIGTERM); rerun the same command to resume; 12,345 records are safe"
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back

    def main2(argv):
        raise KeyboardInterrupt

    assert _entry(main2) == (130, "virnucdist: interrupted; rerun the same command to resume; "
                                  "records already written are safe\n")


def test_user_error_classes_are_one_line():
    for exc in (UserError("bad flag"), FastaError("x.fa", 3, "bad line"), ModelLoadError("no weights here"),
                FileNotFoundError("nothing")):
        def main(argv, exc=exc):
            raise exc
        code, err = _entry(main)
        assert code == 2 and err.count("\n") == 1 and err.startswith("virnucdist: error: "), err
    assert issubclass(FastaError, ValueError)  # still what callers caught before


def test_torchrun_error_file_carries_the_line(tmp_path, monkeypatch):
    """torchrun's summary shows the error file's py_callstack: our line, not a traceback."""
    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))

    def main(argv):
        raise UserError("input x.fa does not exist\n  pass an existing file")

    code, err = _entry(main)
    line = "virnucdist: error: input x.fa does not exist pass an existing file"
    assert code == 2 and err == line + "\n"
    data = json.loads(path.read_text())
    assert data["message"]["message"] == data["message"]["extraInfo"]["py_callstack"] == line
    assert abs(int(data["message"]["extraInfo"]["timestamp"]) - time.time()) < 60
    # and torchrun's own reader formats it as the root cause
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    text = str(ChildFailedError("virnucdist.embed", {0: ProcessFailure(0, 1, 2, str(path))}))
    assert f"traceback : {line}" in text and "Traceback" not in text


def test_last_word_waits_for_the_launcher():
    """The detached printer writes the line only after the launcher pid has exited."""
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-I", "-S", "-c", entry._LAST_WORD, str(launcher.pid), "virnucdist: last",
                        "30"], capture_output=True, text=True, timeout=60)
    waited = time.monotonic() - t0
    launcher.wait()
    assert p.returncode == 0 and p.stderr == "virnucdist: last\n"
    assert waited >= 1.0  # it waited for the launcher to exit
    gone = subprocess.run([sys.executable, "-I", "-S", "-c", entry._LAST_WORD, str(launcher.pid), "again", "0.5"],
                          capture_output=True, text=True, timeout=60)
    assert gone.stderr == "again\n"  # a launcher already gone: at once


_ORPHAN = r"""
import os, signal, sys, time
from virnucdist.launch.dist import watch_launcher
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a rank that cannot react (stuck in a collective)
watch_launcher(0, poll_s=0.1, grace_s=0.5)
print(os.getpid(), flush=True)
time.sleep(60)
"""


def test_watchdog_ends_a_rank_that_does_not_stop(tmp_path):
    """The launcher dies; the rank ignores SIGTERM: the watchdog thread ends it after its grace time."""
    launcher = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                                 f"subprocess.Popen([sys.executable, '-c', {_ORPHAN!r}]); time.sleep(60)"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        rank = int(launcher.stdout.readline())
        launcher.kill()
        launcher.wait()
        end = time.monotonic() + 10
        while time.monotonic() < end and alive(rank):
            time.sleep(0.05)
        running = alive(rank)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    if running:
        os.kill(rank, signal.SIGKILL)
    assert not running, "the orphaned rank kept running"
    err = launcher.stderr.read()
    assert "the torchrun launcher (pid" in err and "did not stop within 0.5 s; ending it" in err, err


_RANK_WITH_WORKERS = r"""
import functools, os, sys, time
from torch.utils.data import DataLoader, Dataset
from virnucdist.launch.dist import worker_dies_with_rank

class Windows(Dataset):  # items larger than a pipe buffer, as a predict window is
    def __len__(self):
        return 64
    def __getitem__(self, i):
        return b"x" * (1 << 20)

init = functools.partial(worker_dies_with_rank, rank_pid=os.getpid()) if sys.argv[1] == "library" else None
it = iter(DataLoader(Windows(), batch_size=None, num_workers=2, prefetch_factor=2, worker_init_fn=init))
next(it), next(it)  # one item from each worker; then time for each to make its next items, which wait in
time.sleep(1.0)     # the pipe (under load a worker may still reach its loop's check only after the rank
                    # died, with nothing to write, and end cleanly: the control asks for one hung worker)
print(" ".join(str(w.pid) for w in it._workers), flush=True)
time.sleep(120)
"""


def _workers_left_after_kill_9(init: str, wait_s: float) -> list[int]:
    """A rank reads an item from each worker of a 2-worker DataLoader, then gets kill -9: its workers still alive
    ``wait_s`` later (or once all have gone, if sooner). Every worker is killed before returning."""
    rank = subprocess.Popen([sys.executable, "-c", _RANK_WITH_WORKERS, init], stdout=subprocess.PIPE, text=True,
                            env=clean_env())
    try:
        workers = [int(pid) for pid in rank.stdout.readline().split()]
    finally:
        rank.kill()
        rank.wait()
    end = time.monotonic() + wait_s
    while time.monotonic() < end and any(alive(pid) for pid in workers):
        time.sleep(0.05)
    left = [pid for pid in workers if alive(pid)]
    for pid in workers:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert len(workers) == 2
    return left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_loader_workers_die_with_a_killed_rank():
    """kill -9 of a rank whose DataLoader workers have results waiting in a full pipe: with the
    library's ``worker_init_fn`` the workers are gone at once. Without it they stay, reparented to
    init: torch's watchdog ends their loop within 5 s, then each waits forever in its result queue's
    finalizer for a feeder thread blocked on the pipe (the hang users saw after a predict rank was
    killed; the control below shows this setup reproduces it for at least one worker)."""
    assert _workers_left_after_kill_9("library", wait_s=10) == []
    assert _workers_left_after_kill_9("none", wait_s=6), \
        "control: without the parent-death signal the workers were expected to hang (torch changed?)"


def test_inspect_into_a_closed_pipe_is_quiet(fasta, tmp_path):
    """``virnucdist inspect --json | head``: the reader left; no BrokenPipeError traceback, status 141."""
    out = tmp_path / "run"
    (out / "shards").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"records": 3, "blob": ["x" * 100] * 2000}))  # > a pipe buffer
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write
    p = subprocess.run([sys.executable, "-m", "virnucdist.cli", "inspect", str(out), "--json"], stdout=w,
                       stderr=subprocess.PIPE, text=True, env=clean_env(), timeout=60)
    os.close(w)
    assert p.returncode == 141 and p.stderr == "", p.stderr
