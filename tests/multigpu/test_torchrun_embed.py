"""``torchrun -m virnucdist.embed`` for real: gloo on CPU here, the same code as on GPUs.

Every test launches real torchrun processes (``python -m torch.distributed.run``)
on a tiny random-init ESM-2 and 500 short proteins (token budget 512, a shard flush
every 32 records, so even this small job has several batches and flushes per rank).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from virnucdist.data.fasta import write_fasta
from virnucdist.writers import read_embeddings
from _helpers import AA, MODEL, alive, clean_env

pytestmark = pytest.mark.torchrun

N_SEQS = 500
TIMEOUT = 240


def _embed_args(fasta: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "virnucdist.embed", str(fasta), "--model", MODEL, "--random-init", "-o", str(out),
            "--num-workers", "0", "--device", "cpu", "--toks-per-batch", "512", "--flush-every", "32",
            "--window-records", "16", "--keep-shards", "--no-dedup", "--quiet", *extra]


def _torchrun_cmd(nproc: int, fasta: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            *_embed_args(fasta, out, *extra)]


def _run(cmd: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, f"rc {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}"
    return p


def _report(out: Path) -> dict:
    return json.loads((out / "run_report.json").read_text())


def _assert_same(out: Path, ref: tuple[list[str], np.ndarray], all_ids: list[str]) -> None:
    """Same ids in the same (input) order, every id exactly once, vectors equal to float rounding."""
    ids, emb = read_embeddings(out / "embeddings.h5")
    assert ids == ref[0] == all_ids
    assert len(set(ids)) == len(ids)
    a, b = emb.astype(np.float64), ref[1].astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(f"{out.name}: min cosine {cos.min():.9f}, max abs diff {np.abs(a - b).max():.3g}")
    assert cos.min() >= 0.9999
    # different batch compositions (other ranks, resumed remainders) change fp32 rounding only
    np.testing.assert_allclose(emb, ref[1], rtol=0, atol=2e-5)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("torchrun")
    rng = np.random.default_rng(42)
    recs = [(f"p{i:04d}", "".join(rng.choice(AA, size=int(rng.integers(2, 26))))) for i in range(N_SEQS)]
    fasta = d / "prot.fa"
    write_fasta(fasta, recs)
    return d, fasta, [r for r, _ in recs]


@pytest.fixture(scope="module")
def ref1(data):
    """The nproc=1 run everything else is compared with."""
    d, fasta, ids = data
    out = d / "ref1"
    _run(_torchrun_cmd(1, fasta, out), d)
    return out, read_embeddings(out / "embeddings.h5")


@pytest.fixture(scope="module")
def run2(data):
    d, fasta, _ = data
    out = d / "run2"
    _run(_torchrun_cmd(2, fasta, out), d)
    return out


def test_two_ranks_equal_one(data, ref1, run2):
    _, _, ids = data
    _assert_same(run2, ref1[1], ids)
    rep = _report(run2)
    assert rep["world_size"] == 2 and rep["summary"]["world_size"] == 2
    assert [r["rank"] for r in rep["ranks"]] == [0, 1]
    per_rank = [r["sequences"] for r in rep["ranks"]]
    assert all(n > 0 for n in per_rank) and sum(per_rank) == len(ids)
    assert rep["summary"]["resumed_records"] == 0
    shards = sorted((run2 / "shards").glob("shard-*.h5"))
    assert [p.name[:12] for p in shards] == ["shard-r00000", "shard-r00001"]
    # the two shards hold disjoint rows that cover the input
    rows = []
    for p in shards:
        with h5py.File(p, "r") as f:
            rows.append(f["rows"][: int(f.attrs["committed"])])
    assert not set(rows[0]) & set(rows[1]) and len(rows[0]) + len(rows[1]) == len(ids)
    assert (run2 / "logs" / "rank1.log").exists()


def test_resume_with_other_world_size(data, ref1, run2):
    """2 ranks ran; the final file and rank 1's shard are lost; 1 rank finishes the job."""
    d, fasta, ids = data
    out = d / "resume"
    shutil.copytree(run2, out)
    (out / "embeddings.h5").unlink()
    (out / "run_report.json").unlink()
    manifest = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**manifest, "complete": False}))  # as if lost before finalize
    lost = sorted((out / "shards").glob("shard-r00001-*.h5"))
    kept = sorted((out / "shards").glob("shard-r00000-*.h5"))
    assert len(lost) == len(kept) == 1
    with h5py.File(kept[0], "r") as f:
        n_kept = int(f.attrs["committed"])
    lost[0].unlink()
    _run(_torchrun_cmd(1, fasta, out), d)
    _assert_same(out, ref1[1], ids)
    rep = _report(out)
    assert rep["summary"]["resumed_records"] == n_kept > 0
    assert rep["ranks"][0]["sequences"] == len(ids) - n_kept


def _descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (torchrun's workers run in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _committed(shard_dir: Path) -> dict[str, int]:
    got = {}
    for p in shard_dir.glob("shard-*.h5"):
        try:
            with h5py.File(p, "r", locking=False) as f:  # the writer holds the file open
                got[p.name[:12]] = int(f.attrs["committed"])
        except Exception:  # being created or mid-flush: look again
            pass
    return got


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find torchrun's workers")
def test_kill_9_mid_inference_then_resume(data, ref1):
    d, fasta, ids = data
    out = d / "killed"
    cmd = _torchrun_cmd(2, fasta, out)
    p = subprocess.Popen(cmd, cwd=d, env=clean_env(VIRNUCDIST_TEST_BATCH_DELAY_S="0.3"), start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            c = _committed(out / "shards") if (out / "shards").is_dir() else {}
            if len(c) == 2 and min(c.values()) > 0:
                break
            assert p.poll() is None, f"run ended before it could be killed:\n{p.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, f"no shard committed rows in time: {c}"
            time.sleep(0.05)
        victims = _descendants(p.pid)
        assert victims, "torchrun has no workers"
        os.killpg(p.pid, signal.SIGKILL)  # the agent's session
        for pid in victims:  # and each worker (own sessions): the whole node dies at once
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == -signal.SIGKILL
    for _ in range(200):  # workers are not our children: wait until they are gone
        if not any(alive(v) for v in victims):
            break
        time.sleep(0.05)
    assert not any(alive(v) for v in victims), "a worker survived the kill"
    assert not (out / "embeddings.h5").exists()
    partial = sum(_committed(out / "shards").values())
    assert 0 < partial < len(ids), partial
    print(f"killed with {partial} of {len(ids)} records committed")

    _run(cmd, d)  # the same command, no delay
    _assert_same(out, ref1[1], ids)
    rep = _report(out)
    assert rep["summary"]["resumed_records"] > 0
    assert rep["summary"]["resumed_records"] + rep["summary"]["sequences"] == len(ids)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_nodes_share_one_output_dir(data, ref1):
    """Two torchrun agents (one per "node") rendezvous over c10d and write one output."""
    d, fasta, ids = data
    out = d / "multinode"
    port = _free_port()
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}",
               "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=localhost:{port}",
               "--rdzv_id=virnucdist-test", *_embed_args(fasta, out)]
        procs.append(subprocess.Popen(cmd, cwd=d, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True))
    try:
        results = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, (o, e) in zip(procs, results):
        assert p.returncode == 0, f"rc {p.returncode}\n{o[-2000:]}\n{e[-5000:]}"
    _assert_same(out, ref1[1], ids)
    rep = _report(out)
    assert rep["world_size"] == 2 and all(r["sequences"] > 0 for r in rep["ranks"])
    assert len(list((out / "shards").glob("shard-*.h5"))) == 2
