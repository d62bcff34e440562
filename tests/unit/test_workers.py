"""Default DataLoader workers: sized from the CPUs a rank may use (affinity mask / local ranks)."""

import os
import subprocess
import sys

import pytest

from virnucdist.launch.dist import MAX_AUTO_WORKERS, cpus_per_local_rank, workers_per_rank

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux affinity masks")

PROBE = """
import os, sys, json
os.sched_setaffinity(0, {0})
from virnucdist.launch.dist import cpus_per_local_rank, workers_per_rank
print(json.dumps([cpus_per_local_rank(), workers_per_rank("cpu"), workers_per_rank("cuda")]))
"""


def _probe(env_extra):
    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return __import__("json").loads(out.stdout)


def test_one_cpu_affinity_gives_no_cpu_workers_and_the_gpu_minimum():
    # a rank pinned to one CPU: no worker competes with the CPU model; a GPU rank still gets 2
    assert _probe({"LOCAL_WORLD_SIZE": "1"}) == [1, 0, 2]


def test_local_ranks_share_the_cpus(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    alone = cpus_per_local_rank()
    assert alone == len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(alone * 2))  # more ranks than CPUs: still one each
    assert cpus_per_local_rank() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert 2 <= workers_per_rank("cuda") <= MAX_AUTO_WORKERS
    assert workers_per_rank("cpu") <= 2


def test_windows_shrink_so_that_every_worker_tokenises():
    import numpy as np

    from virnucdist.engine.loop import MIN_WINDOW_BATCHES, WINDOW_BATCHES, window_cost
    from virnucdist.sharding.partition import plan_windows

    toks, workers = 262144, 14
    costs = np.full(1_000_000, 40)  # 1M DNABERT-S reads (150 bp: <= 40 tokens each)
    big = plan_windows(np.arange(len(costs)), costs, WINDOW_BATCHES * toks, ramp=True)
    cost = window_cost(int(costs.sum()), toks, workers)
    small = plan_windows(np.arange(len(costs)), costs, cost, ramp=True)
    assert len(big) < workers <= 2 * workers <= len(small)  # before: fewer windows than workers
    assert np.array_equal(np.concatenate(small), np.arange(len(costs)))  # every record once, in order
    assert window_cost(10**12, toks, workers) == WINDOW_BATCHES * toks  # a large share keeps full windows
    assert window_cost(1000, toks, workers) == MIN_WINDOW_BATCHES * toks  # a small one keeps packing room
    assert window_cost(int(costs.sum()), toks, 0) == WINDOW_BATCHES * toks  # no workers: no reason to shrink
