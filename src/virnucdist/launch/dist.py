"""Distributed setup from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

NCCL when CUDA is present, gloo otherwise; a plain ``python -m`` run is a world
of one with no process group at all.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed"]


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


def init_distributed(device: str | None = None, timeout_s: float = 3600.0) -> DistContext:
    """Join torchrun's process group (or run alone) and pick this rank's device.

    ``device``: "cuda", "cpu" or None for CUDA when available.
    """
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but no CUDA GPU is visible")
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
