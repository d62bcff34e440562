"""Per-rank timers, counters, an NVML utilisation sampler, a timeline and the run report.

The engine's side, per rank: ``tel = Telemetry(rank, device)`` at the start, ``with
tel.phase(name): ...`` around each phase, ``tel.count(records, tokens)`` once per batch
in the loop (two integer additions; the timeline thread reads the counters, nothing
syncs the GPU), and ``tel.finish()`` at the end, which returns the :class:`RankStats`
(with ``timeline`` and ``phase_spans``) to all-gather and write with
:func:`write_run_report`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["RankStats", "Telemetry", "GpuSampler", "Timeline", "write_run_report", "format_summary"]

SAMPLE_EVERY_S = 5.0  # default timeline interval; VIRNUCDIST_SAMPLE_EVERY_S overrides it
MAX_TIMELINE_POINTS = 2000  # when full, every other point is merged away and the interval doubles


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
    rss_after_plan_gb: float | None = None  # host memory once this rank holds its run (engine/plan.py)
    gpu_util_mean: float | None = None
    gpu_util_min: float | None = None
    gpu_util_samples: int = 0
    started_unix: float = 0.0  # time.time() when this rank's Telemetry started: aligns ranks on one axis
    # start-up: seconds from this process's launch (interpreter start) to its Telemetry (imports, process group,
    # input checks) and to its first forward launched (+ index, model load, loader workers, kernel JIT)
    launch_to_run_s: float | None = None
    start_s: float | None = None
    # [{"name", "start", "end"}], seconds since this rank's start, in the order the phases ran
    phase_spans: list[dict] = field(default_factory=list)
    # [{"t", "records", "tokens", "tok_s", "gpu_util", "gpu_mem_gb", "rss_gb"}]: see Timeline
    timeline: list[dict] = field(default_factory=list)

    @property
    def inference_s(self) -> float:
        return self.phases.get("inference", 0.0)


class GpuSampler:
    """Samples this GPU through NVML in a thread (no nvidia-smi processes).

    Utilisation is polled every ``interval_s``: into ``samples`` while :meth:`active`
    (the inference phase), and always into a running mean that :meth:`take_mean`
    hands to the timeline. ``available`` is False without NVML (then nothing runs).
    """

    def __init__(self, device_index: int, interval_s: float = 0.2):
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sum = self._n = 0
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

    @property
    def available(self) -> bool:
        return self._handle is not None

    def _run(self):
        while not self._stop.wait(self._interval):
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            except Exception:
                return
            with self._lock:
                self._sum += util
                self._n += 1
            if self._active.is_set():
                self.samples.append(util)

    def take_mean(self) -> float | None:
        """Mean utilisation (%) since the last call; one fresh reading if none was polled since."""
        with self._lock:
            total, n, self._sum, self._n = self._sum, self._n, 0, 0
        if n:
            return total / n
        try:
            return float(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu) if self.available else None
        except Exception:
            return None

    def memory_used_gb(self) -> float | None:
        """Memory in use on this GPU (all processes), GB (1e9 bytes), or None."""
        try:
            return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 1e9 if self.available else None
        except Exception:
            return None

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


def _rss_gb() -> float | None:
    """This process's resident memory, GB (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak * (1 if sys.platform == "darwin" else 1024) / 1e9


def _merged(before: dict, a: dict, b: dict) -> dict:
    """Points ``a`` and ``b`` (``before`` precedes them) as one point at ``b``'s time."""
    da, db = a["t"] - before["t"], b["t"] - a["t"]
    utils = [(u, d) for u, d in ((a["gpu_util"], da), (b["gpu_util"], db)) if u is not None]
    util = (sum(u * d for u, d in utils) / sum(d for _, d in utils) if sum(d for _, d in utils) > 0
            else utils[-1][0]) if utils else None
    peak = {k: max((p[k] for p in (a, b) if p[k] is not None), default=None) for k in ("gpu_mem_gb", "rss_gb")}
    dt = b["t"] - before["t"]
    return {**b, "tok_s": round((b["tokens"] - before["tokens"]) / dt, 1) if dt > 0 else 0.0,
            "gpu_util": None if util is None else round(util, 1), **peak}


class Timeline:
    """One rank's progress over time: a bounded list of points, sampled by a light timer thread.

    A point: ``t`` (s since the rank started), ``records`` and ``tokens`` done so far (the
    counters :meth:`count` adds to; the loop never waits on the thread, nor on the GPU),
    ``tok_s`` over the interval since the previous point, ``gpu_util`` (mean % over that
    interval from the NVML sampler; None without one), ``gpu_mem_gb`` (GPU memory in use)
    and ``rss_gb`` (host resident memory). A point every ``every_s`` seconds, plus the first,
    one at each :meth:`sample` call (phase ends; merged into the previous point when closer
    than half an interval: a rate over a few ms is noise) and the last (:meth:`stop`). When
    ``max_points`` are reached, pairs of points merge (every other point goes, the interval
    doubles), so a run of any length keeps at most ``max_points``.
    """

    def __init__(self, every_s: float = SAMPLE_EVERY_S, gpu: GpuSampler | None = None,
                 max_points: int = MAX_TIMELINE_POINTS, t0: float | None = None):
        if not every_s > 0:
            raise ValueError(f"timeline interval must be > 0 seconds, got {every_s}")
        self.every_s, self.max_points = float(every_s), max(int(max_points), 4)
        self.records = self.tokens = 0
        self.points: list[dict] = []
        self._gpu = gpu if gpu is not None and gpu.available else None
        self._t0 = time.perf_counter() if t0 is None else t0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True, name="timeline")
        self._thread.start()

    def first_batch(self) -> None:
        """Call when this rank's first forward has been launched: ``start_s`` = launch -> now (start-up)."""
        if self.stats.start_s is None and self.stats.launch_to_run_s is not None:
            self.stats.start_s = self.stats.launch_to_run_s + time.perf_counter() - self._t0

    def count(self, records: int, tokens: int) -> None:
        self.records += records
        self.tokens += tokens

    def _run(self):
        while True:
            due = self.points[-1]["t"] + self.every_s - (time.perf_counter() - self._t0)
            if self._stop.wait(max(due, 0.01)):
                return
            if time.perf_counter() - self._t0 >= self.points[-1]["t"] + self.every_s:
                self.sample()

    def sample(self) -> None:
        """Add a point now (the thread calls this every ``every_s``; phase ends call it too)."""
        with self._lock:
            t = time.perf_counter() - self._t0
            util = self._gpu.take_mean() if self._gpu else None
            mem = self._gpu.memory_used_gb() if self._gpu else None
            rss = _rss_gb()
            point = {"t": round(t, 4), "records": self.records, "tokens": self.tokens, "tok_s": 0.0,
                     "gpu_util": None if util is None else round(util, 1),
                     "gpu_mem_gb": None if mem is None else round(mem, 3),
                     "rss_gb": None if rss is None else round(rss, 3)}
            pts = self.points
            if pts:
                dt = point["t"] - pts[-1]["t"]
                point["tok_s"] = round((point["tokens"] - pts[-1]["tokens"]) / dt, 1) if dt > 0 else 0.0
            if len(pts) >= 2 and point["t"] - pts[-1]["t"] < 0.5 * self.every_s:
                pts[-1] = _merged(pts[-2], pts[-1], point)  # too close to the last point: a rate over ~0 s is noise
            else:
                pts.append(point)
            if len(pts) >= self.max_points:
                out, i = [pts[0]], 1
                while i + 1 < len(pts):
                    out.append(_merged(out[-1], pts[i], pts[i + 1]))
                    i += 2
                self.points = out + pts[i:]
                self.every_s *= 2

    def stop(self) -> list[dict]:
        """The last point; the thread ends. Returns the points."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.sample()
        return self.points


def process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``: 10-ms resolution); None elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class Telemetry:
    """A rank's timers and counters. ``sample_every_s``: the timeline's interval (default
    ``VIRNUCDIST_SAMPLE_EVERY_S`` from the environment, else 5 s)."""

    def __init__(self, rank: int, device: torch.device, sample_every_s: float | None = None):
        self.device = device
        self._t0 = time.perf_counter()
        self.stats = RankStats(rank=rank, device=str(device), started_unix=time.time(), launch_to_run_s=process_age_s())
        self.gpu = GpuSampler(device.index or 0) if device.type == "cuda" else None
        if sample_every_s is None:
            env = os.environ.get("VIRNUCDIST_SAMPLE_EVERY_S", "")
            try:
                sample_every_s = float(env) if env else SAMPLE_EVERY_S
            except ValueError:
                raise ValueError(f"VIRNUCDIST_SAMPLE_EVERY_S={env!r}: give the timeline interval in seconds") from None
        self.timeline = Timeline(sample_every_s, gpu=self.gpu, t0=self._t0)

    def first_batch(self) -> None:
        """Call when this rank's first forward has been launched: ``start_s`` = launch -> now (start-up)."""
        if self.stats.start_s is None and self.stats.launch_to_run_s is not None:
            self.stats.start_s = self.stats.launch_to_run_s + time.perf_counter() - self._t0

    def count(self, records: int, tokens: int) -> None:
        """Records and tokens just done (call once per batch; two additions, no GPU sync)."""
        self.timeline.count(records, tokens)

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
                t1 = time.perf_counter()
                self.stats.phases[name] = self.stats.phases.get(name, 0.0) + t1 - t0
                self.stats.phase_spans.append({"name": name, "start": round(t0 - self._t0, 4),
                                               "end": round(t1 - self._t0, 4)})
                self.timeline.sample()

    def finish(self) -> RankStats:
        s = self.stats
        s.timeline = list(self.timeline.stop())
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
        # the slowest rank's launch -> first batch done (None: not measured, e.g. nothing to compute)
        "start_s": max((r.start_s for r in ranks if r.start_s is not None), default=None),
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
    tmp.write_text(_dumps(report))
    os.replace(tmp, path)
    return report


def _dumps(report: dict) -> str:
    """Indented JSON with each timeline point on one line (thousands of points stay readable)."""
    text = json.dumps(report, indent=2, default=str)
    try:
        return re.sub(r'\{\s*"t": [^{}"]*(?:"[a-z_]+": [^{}"]*)*\}', lambda m: json.dumps(json.loads(m.group(0))), text)
    except json.JSONDecodeError:
        return text


def format_summary(ranks: list[RankStats], wall_s: float) -> str:
    s = summarize(ranks, wall_s)
    lines = [f"{'rank':>4} {'device':>8} {'seqs':>9} {'tokens':>11} {'infer s':>8} {'tok/s':>10} {'pack':>6} {'gpu%':>5}"]
    for r in ranks:
        util = f"{r.gpu_util_mean:5.0f}" if r.gpu_util_mean is not None else "    -"
        tps = r.tokens / r.inference_s if r.inference_s else 0.0
        lines.append(f"{r.rank:>4} {r.device:>8} {r.sequences:>9} {r.tokens:>11} {r.inference_s:>8.2f} {tps:>10.0f} "
                     f"{r.packing_efficiency:>6.1%} {util}")
    lines.append(f"total: {s['sequences']} sequences, {s['tokens']} tokens, {s['tokens_per_s']:.0f} tokens/s, "
                 f"token imbalance {s['token_imbalance']:.2%}, wall {wall_s:.1f} s"
                 + (f", start (launch -> first batch) {s['start_s']:.1f} s" if s["start_s"] is not None else ""))
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    from ._version import __version__

    out = {"virnucdist": __version__, "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["gpu"] = torch.cuda.get_device_name()
    return out
