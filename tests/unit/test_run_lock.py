"""One run per output directory: a second launch is refused in one line, a dead run's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from virnucdist import EmbedConfig, embed
from virnucdist.data.fasta import write_fasta
from virnucdist.engine.lock import LOCK_NAME, STALE_S, DirectoryBusy, RunLock
from virnucdist.writers import read_embeddings

MODEL = "esm2_t6_8M_UR50D"
AA = list("ACDEFGHIKLMNPQRSTVWY")


def _cfg(fasta, out) -> EmbedConfig:
    return EmbedConfig(inputs=(str(fasta),), model=MODEL, output_dir=str(out), random_init=True, num_workers=0,
                       device="cpu", toks_per_batch=256, window_records=4, quiet=True)


@pytest.fixture
def fasta(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "p.fa"
    write_fasta(path, [(f"p{i}", "".join(rng.choice(AA, int(rng.integers(5, 60))))) for i in range(24)])
    return path


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_launch_into_a_busy_directory_is_refused_and_the_first_completes(fasta, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VIRNUCDIST_TEST_BATCH_DELAY_S": "1.5"}
    cmd = [sys.executable, "-m", "virnucdist.embed", str(fasta), "--model", MODEL, "--random-init", "-o", str(out),
           "--num-workers", "0", "--device", "cpu", "--toks-per-batch", "256", "--window-records", "4", "--quiet"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):  # the first run is inside its batch loop
            log = out / "logs" / "rank0.log"
            if log.exists() and "to compute on" in log.read_text():
                break
            time.sleep(0.05)
        owner = json.loads((out / LOCK_NAME).read_text())
        assert owner["pid"] == first.pid and owner["host"] == socket.gethostname()
        with pytest.raises(DirectoryBusy, match=rf"in use by another virnucdist run \(host .*, pid {first.pid},"):
            embed(_cfg(fasta, out))
        second = subprocess.run(cmd, env={**env, "VIRNUCDIST_TEST_BATCH_DELAY_S": ""}, capture_output=True,
                                text=True, timeout=120)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("virnucdist: error: ") and "in use by another" in lines[0]
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err[-2000:]
    ids, _ = read_embeddings(out / "embeddings.h5")
    assert ids == [f"p{i}" for i in range(24)]
    assert not (out / LOCK_NAME).exists()  # released at the end


def test_the_lock_of_a_killed_run_is_taken_over(fasta, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "token": "x",
                                             "started": "earlier"}))
    embed(_cfg(fasta, out))
    assert not (out / LOCK_NAME).exists()


def test_liveness_same_host_pid_reuse_and_other_hosts(tmp_path):
    path = tmp_path / LOCK_NAME
    mine = RunLock(tmp_path).me
    # our own pid, but another process start time: the pid was reused, the owner is dead
    path.write_text(json.dumps({**mine, "start_ticks": "1", "token": "old"}))
    lock = RunLock(tmp_path).acquire()
    assert json.loads(path.read_text())["token"] == lock.me["token"]
    lock.release()
    assert not path.exists()
    # another host: alive while its heartbeat is fresh, taken over once it is older than STALE_S
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "far", "started": "now"}))
    with pytest.raises(DirectoryBusy, match="host elsewhere, pid 1"):
        RunLock(tmp_path).acquire()
    old = time.time() - STALE_S - 5
    os.utime(path, (old, old))
    RunLock(tmp_path).acquire().release()
    assert not path.exists()
