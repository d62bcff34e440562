"""Ending under torchrun: the last line a user reads, Ctrl-C, and ranks whose launcher was killed.

Real ``torchrun --nproc_per_node=2 -m virnucdist.embed`` runs (gloo on CPU, a tiny random-init
ESM-2); long runs are slowed down with the test-only ``VIRNUCDIST_TEST_BATCH_DELAY_S`` hook.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virnucdist.data.fasta import write_fasta
from _helpers import AA, MODEL, alive, clean_env, finish

pytestmark = pytest.mark.torchrun


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
            "virnucdist.embed", *args, "--model", MODEL, "--random-init", "--device", "cpu"]


def _nonempty(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def _no_traceback_from_us(stderr: str) -> None:
    """torchrun's own ChildFailedError traceback is torchrun's; no frame of virnucdist, no SignalException."""
    frames = [ln for ln in stderr.splitlines() if ln.lstrip().startswith("File ") and "virnucdist" in ln]
    assert not frames, stderr
    assert "Exception ignored" not in stderr, stderr


@pytest.fixture(scope="module")
def fasta(tmp_path_factory) -> Path:
    import random

    rng = random.Random(5)
    path = tmp_path_factory.mktemp("launcher") / "prot.fa"
    write_fasta(path, [(f"l{i:03d}", "".join(rng.choice(AA) for _ in range(rng.randint(5, 30)))) for i in range(120)])
    return path


@pytest.mark.parametrize("case", ["missing", "bad_fasta"])
def test_user_error_is_the_last_line(tmp_path, case):
    if case == "missing":
        inp, want = tmp_path / "nope.fa", f"virnucdist: error: input {tmp_path / 'nope.fa'} does not exist"
    else:
        inp = tmp_path / "bad.fa"
        inp.write_text("MKV\n>a\nMK\n")  # no header: found while rank 0 builds the index (rank 1: PeerFailed)
        want = f"virnucdist: error: {inp}, line 1: expected a FASTA header"
    p = subprocess.run(_cmd(str(inp), "-o", str(tmp_path / "out")), env=clean_env(), capture_output=True, text=True,
                       timeout=180)
    assert p.returncode == 1  # torchrun's own code for any failed rank; the rank's is in its summary
    last = _nonempty(p.stderr)[-1]
    assert last.startswith(want), p.stderr  # the one clear line is the last thing on stderr
    ours = [ln for ln in p.stderr.splitlines() if ln.startswith("virnucdist:")]
    assert set(ours) == {last}  # said by rank 0 only (then once more after torchrun's report)
    # torchrun's summary names the root cause with our line and the rank's exit code 2, not a traceback
    assert f"traceback : {last}" in p.stderr and re.search(r"exitcode\s*: 2 ", p.stderr), p.stderr
    _no_traceback_from_us(p.stderr)


def _descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            for c in kids:
                if c not in out:
                    out.add(c)
                    todo.append(c)
    return out


def _start_long_run(fasta: Path, out: Path) -> tuple[subprocess.Popen, set[int]]:
    """A 2-rank run slowed to ~0.3 s a window of 2 records, each rank with one DataLoader worker; waits for the batch loop."""
    p = subprocess.Popen(_cmd(str(fasta), "-o", str(out), "--toks-per-batch", "64", "--window-records", "2",
                              "--num-workers", "1"),
                         env=clean_env(VIRNUCDIST_TEST_BATCH_DELAY_S="0.3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    end = time.monotonic() + 150
    logs = [out / "logs" / f"rank{r}.log" for r in (0, 1)]
    while time.monotonic() < end and p.poll() is None:
        if all(f.is_file() and "to compute on" in f.read_text() for f in logs[:1]) and logs[1].is_file():
            break
        time.sleep(0.2)
    time.sleep(2.0)  # both ranks in the loop, DataLoader workers up
    tree = _descendants(p.pid)
    return p, tree


def _finish(p: subprocess.Popen, timeout: float = 90) -> str:
    return finish(p, timeout)[1]


def test_ranks_and_workers_exit_when_the_launcher_is_killed(fasta, tmp_path):
    p, tree = _start_long_run(fasta, tmp_path / "out")
    try:
        assert len(tree) >= 4, tree  # 2 ranks + their DataLoader workers
        os.kill(p.pid, signal.SIGKILL)  # the launcher dies without a word (OOM killer, lost Slurm step)
        p.wait()
        end = time.monotonic() + 20  # PDEATHSIG at once; torch's worker watchdog polls every 5 s
        while time.monotonic() < end and any(map(alive, tree)):
            time.sleep(0.2)
        left = sorted(pid for pid in tree if alive(pid))
        took = 20 - (end - time.monotonic())
    finally:
        for pid in tree:  # never leave orphans behind, whatever happened
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    stderr = _finish(p, timeout=30)
    assert not left, f"still running {took:.0f} s after the launcher died: {left}"
    # rank 0 says why it stopped (the kernel's parent-death SIGTERM, turned into the interrupt line)
    assert any(ln.startswith("virnucdist: interrupted (SIGTERM: the torchrun launcher is gone); rerun the same "
                             "command to resume; ") for ln in stderr.splitlines()), stderr
    _no_traceback_from_us(stderr)


def test_ctrl_c_under_torchrun_is_the_last_line(fasta, tmp_path):
    p, _ = _start_long_run(fasta, tmp_path / "out")
    p.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C does to the foreground torchrun
    stderr = _finish(p)
    last = _nonempty(stderr)[-1]
    assert re.match(r"^virnucdist: interrupted; rerun the same command to resume; "
                    r"([\d,]+ records are safe|records already written are safe)$", last), stderr
    assert p.returncode != 0
    _no_traceback_from_us(stderr)
    assert "SignalException" not in "\n".join(ln for ln in stderr.splitlines() if "virnucdist" in ln)
