"""Per-rank timers, counters, an NVML utilisation sampler and the run report."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["RankStats", "Telemetry", "GpuSampler", "write_run_report", "format_summary"]


@dataclass
class RankStats:
    rank: int
    host: str = field(default_factory=platform.node)
    device: str = "cpu"
    phases: dict[str, float] = field(default_factory=dict)
    sequences: int = 0
    tokens: int = 0
    batches: int = 0
    planned_tokens: int = 0
    packing_efficiency: float = 0.0
    toks_per_batch: int = 0
    truncated: int = 0
    records_with_unknown_letters: int = 0  # embedded, but with the tokenizer's unknown token for some letters
    unknown_letter_examples: list[str] = field(default_factory=list)  # a few of their ids
    skipped: dict[str, int] = field(default_factory=dict)
    resumed_records: int = 0
    oom_splits: int = 0
    peak_gpu_mem_gib: float = 0.0
    gpu_util_mean: float | None = None
    gpu_util_min: float | None = None
    gpu_util_samples: int = 0

    @property
    def inference_s(self) -> float:
        return self.phases.get("inference", 0.0)


class GpuSampler:
    """Samples this GPU's utilisation through NVML in a thread (no nvidia-smi processes)."""

    def __init__(self, device_index: int, interval_s: float = 0.2):
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            idx = int(visible.split(",")[device_index]) if visible and visible.split(",")[0].isdigit() else device_index
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(idx)
        except Exception:
            return
        self._interval = interval_s
        self._thread = threading.Thread(target=self._run, daemon=True, name="nvml-sampler")
        self._active = threading.Event()
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self._interval):
            if self._active.is_set():
                try:
                    self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
                except Exception:
                    return

    @contextlib.contextmanager
    def active(self):
        if self._handle is None:
            yield
            return
        self._active.set()
        try:
            yield
        finally:
            self._active.clear()

    def stop(self):
        self._stop.set()


class Telemetry:
    def __init__(self, rank: int, device: torch.device):
        self.device = device
        self.stats = RankStats(rank=rank, device=str(device))
        self.gpu = GpuSampler(device.index or 0) if device.type == "cuda" else None

    @contextlib.contextmanager
    def phase(self, name: str, sync: bool = True):
        """Time a phase; on CUDA the device is synchronised at both ends so queued work is counted."""
        if sync and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        ctx = self.gpu.active() if (self.gpu and name == "inference") else contextlib.nullcontext()
        with ctx:
            try:
                yield
            finally:
                if sync and self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.stats.phases[name] = self.stats.phases.get(name, 0.0) + time.perf_counter() - t0

    def finish(self) -> RankStats:
        s = self.stats
        if self.device.type == "cuda":
            s.peak_gpu_mem_gib = torch.cuda.max_memory_allocated(self.device) / 2**30
        if self.gpu is not None:
            self.gpu.stop()
            if self.gpu.samples:
                s.gpu_util_mean = sum(self.gpu.samples) / len(self.gpu.samples)
                s.gpu_util_min = float(min(self.gpu.samples))
                s.gpu_util_samples = len(self.gpu.samples)
        return s


def summarize(ranks: list[RankStats], wall_s: float) -> dict[str, Any]:
    tokens = [r.tokens for r in ranks]
    inf = [r.inference_s for r in ranks]
    total_tokens = sum(tokens)
    return {
        "world_size": len(ranks),
        "wall_s": wall_s,
        "sequences": sum(r.sequences for r in ranks),
        "tokens": total_tokens,
        "tokens_per_s": total_tokens / max(max(inf, default=0.0), 1e-9),
        "token_imbalance": (max(tokens) - min(tokens)) / max(max(tokens), 1) if tokens else 0.0,
        "inference_time_spread": (max(inf) - min(inf)) / max(max(inf), 1e-9) if inf else 0.0,
        "truncated": sum(r.truncated for r in ranks),
        "records_with_unknown_letters": sum(r.records_with_unknown_letters for r in ranks),
        "oom_splits": sum(r.oom_splits for r in ranks),
        "resumed_records": sum(r.resumed_records for r in ranks),
    }


def write_run_report(path: str | Path, ranks: list[RankStats], wall_s: float, extra: dict[str, Any]) -> dict:
    report = {
        "command": sys.argv,
        "versions": _versions(),
        "summary": summarize(ranks, wall_s),
        "ranks": [asdict(r) for r in ranks],
        **extra,
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, path)
    return report


def format_summary(ranks: list[RankStats], wall_s: float) -> str:
    s = summarize(ranks, wall_s)
    lines = [f"{'rank':>4} {'device':>8} {'seqs':>9} {'tokens':>11} {'infer s':>8} {'tok/s':>10} {'pack':>6} {'gpu%':>5}"]
    for r in ranks:
        util = f"{r.gpu_util_mean:5.0f}" if r.gpu_util_mean is not None else "    -"
        tps = r.tokens / r.inference_s if r.inference_s else 0.0
        lines.append(f"{r.rank:>4} {r.device:>8} {r.sequences:>9} {r.tokens:>11} {r.inference_s:>8.2f} {tps:>10.0f} "
                     f"{r.packing_efficiency:>6.1%} {util}")
    lines.append(f"total: {s['sequences']} sequences, {s['tokens']} tokens, {s['tokens_per_s']:.0f} tokens/s, "
                 f"token imbalance {s['token_imbalance']:.2%}, wall {wall_s:.1f} s")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    from . import __version__

    out = {"virnucdist": __version__, "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["gpu"] = torch.cuda.get_device_name()
    return out
