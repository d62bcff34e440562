"""Distributed setup from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

NCCL when CUDA is present, gloo otherwise; a plain ``python -m`` run is a world
of one with no process group at all. Under torchrun a rank also exits when its launcher
dies (SIGKILL, the OOM killer, a lost Slurm step) instead of holding its GPU as an orphan:
see :func:`watch_launcher`.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "watch_launcher", "worker_dies_with_rank"]


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def barrier(self) -> None:
        if self.distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def shutdown(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


#: most DataLoader workers a rank starts by default (tokenising 150-bp reads: ~0.25M DNABERT-S tokens/s each)
MAX_AUTO_WORKERS = 16


def cpus_per_local_rank() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a Slurm/cgroup share), split between the
    ranks of this node (``LOCAL_WORLD_SIZE``, set by torchrun)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, cpus // local)


def workers_per_rank(device) -> int:
    """Default ``--num-workers``: on a GPU, every CPU of this rank's share but two (the rank's own loop
    and its writer thread), at least 2 and at most :data:`MAX_AUTO_WORKERS`; on CPU, where the model
    itself needs the cores, 2 at most (0 with a single CPU)."""
    per = cpus_per_local_rank()
    if torch.device(device).type == "cuda":
        return max(2, min(per - 2, MAX_AUTO_WORKERS))
    return min(2, per - 1)


def init_distributed(device: str | None = None, timeout_s: float = 3600.0) -> DistContext:
    """Join torchrun's process group (or run alone) and pick this rank's device.

    ``device``: "cuda", "cpu" or None for CUDA when available.
    """
    rank = int(os.environ.get("RANK", "0"))
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun's agent: leave when it dies
        watch_launcher(rank)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        if not torch.cuda.is_available():
            from ..errors import UserError

            raise UserError("--device cuda was asked for but no CUDA GPU is visible on this node "
                            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!s}); "
                            "use --device cpu, or run on a node with a GPU")
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
        # share the cores between the ranks of this node instead of oversubscribing, unless the
        # user (or torchrun) chose a thread count; count the cores this process may run on
        if not os.environ.get("OMP_NUM_THREADS"):
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            torch.set_num_threads(max(1, cores // max(1, local_world)))
    backend = None
    if world > 1:
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            kwargs: dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout_s)}
            if backend == "nccl":
                kwargs["device_id"] = dev
            store = _restart_store(world, kwargs["timeout"])
            if store is not None:
                kwargs.update(store=store, rank=rank, world_size=world)
            dist.init_process_group(backend=backend, **kwargs)
    return DistContext(rank, world, local_rank, local_world, dev, backend)


def _restart_store(world: int, timeout: datetime.timedelta) -> dist.Store | None:
    """A store of this restart's own for a single-node torchrun restart (``--max-restarts``); None otherwise.

    torchrun's agent keeps one TCPStore for all attempts, so a restarted rank can read the
    previous attempt's gloo/NCCL addresses and fail to connect (pytorch/pytorch#135712).
    Keys under a per-attempt prefix fix that. TORCHELASTIC_RESTART_COUNT agrees between
    ranks only when one agent started them all (one node); multi-node runs keep torch's default.
    """
    env = os.environ
    attempt = int(env.get("TORCHELASTIC_RESTART_COUNT") or 0)
    if attempt == 0 or env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or env.get("GROUP_WORLD_SIZE") != "1":
        return None
    base = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world, is_master=False, timeout=timeout)
    return dist.PrefixStore(f"virnucdist/attempt{attempt}", base)


_watched: int | None = None  # the launcher pid this process watches (once per process)


def _set_parent_death_signal(sig: int) -> bool:
    """Linux: the kernel sends ``sig`` to this process when its parent dies (not inherited by forks)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(sig), 0, 0, 0) == 0  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return False


def worker_dies_with_rank(worker_id: int = 0, rank_pid: int | None = None) -> None:
    """DataLoader ``worker_init_fn``: the worker gets SIGKILL the moment its rank dies (even by kill -9).

    torch's own watchdog ends a worker's loop within 5 s of its parent's death, but the worker then
    waits forever in its result queue's finalizer for a feeder thread blocked on a full pipe (a
    predict window is megabytes): it stayed alive, reparented to init. A worker holds nothing to save
    (it only reads and packs), so it may die at once.
    """
    if _set_parent_death_signal(signal.SIGKILL) and rank_pid is not None and os.getppid() != rank_pid:
        os._exit(1)  # the rank died before the signal was set


def watch_launcher(rank: int, poll_s: float = 1.0, grace_s: float = 10.0) -> None:
    """Exit this rank when its launcher (the parent process now, torchrun's agent) dies.

    Two mechanisms: the Linux parent-death signal (SIGTERM at once, which the entrypoint turns
    into "interrupted; rerun the same command to resume") and a daemon thread that polls
    ``os.getppid()`` (portable; also catches a parent that died before the signal was set).
    When the launcher is gone the thread sends SIGTERM if the kernel did not, and if the rank
    has not exited ``grace_s`` later (its main thread blocked in a collective whose peers are
    gone, or ignoring SIGTERM), says so and ends it with ``os._exit(143)``: shards are
    resumable after any kill. DataLoader
    workers, children of the rank, exit through torch's own watchdog on their parent
    (``MP_STATUS_CHECK_INTERVAL``, 5 s) once the rank is gone.
    """
    global _watched
    launcher = os.getppid()
    if _watched is not None or launcher <= 1:
        return
    _watched = launcher
    # if the launcher died before the signal was set, the kernel will not send it: the thread does
    by_kernel = _set_parent_death_signal(signal.SIGTERM) and os.getppid() == launcher

    def watch() -> None:
        stop = threading.Event()
        while os.getppid() == launcher:
            stop.wait(poll_s)
        if not by_kernel:
            os.kill(os.getpid(), signal.SIGTERM)
        stop.wait(grace_s)  # the main thread unwinds and exits (launch.entry) unless it is stuck
        print(f"virnucdist: rank {rank}: the torchrun launcher (pid {launcher}) is gone and this rank did not "
              f"stop within {grace_s:g} s; ending it (rerun the same command to resume)", file=sys.stderr, flush=True)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="virnucdist-launcher-watch", daemon=True).start()
