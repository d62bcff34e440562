"""Telemetry: phase timers and spans, the per-rank timeline (counts, rates, NVML samples), the report file."""

from __future__ import annotations

import json
import sys
import time
import types

import pytest
import torch

from virnucdist.telemetry import GpuSampler, Telemetry, Timeline, write_run_report


def _slow_loop(tel: Telemetry, batches: int = 12, records: int = 3, tokens: int = 250, pause: float = 0.02):
    with tel.phase("index"):
        time.sleep(0.03)
    with tel.phase("inference"):
        for _ in range(batches):
            time.sleep(pause)
            tel.count(records, tokens)
    with tel.phase("finalize", sync=False):
        time.sleep(0.01)
    return tel.finish()


def test_timeline_of_a_slow_loop_is_monotone_and_counts_everything():
    s = _slow_loop(Telemetry(0, torch.device("cpu"), sample_every_s=0.04))
    tl = s.timeline
    assert len(tl) >= 5
    for key in ("t", "records", "tokens"):
        assert all(a[key] <= b[key] for a, b in zip(tl, tl[1:])), key
    assert all(a["t"] < b["t"] for a, b in zip(tl, tl[1:]))
    assert (tl[-1]["records"], tl[-1]["tokens"]) == (36, 3000)
    busy = [p["tok_s"] for p in tl if p["tok_s"] > 0]
    assert busy and all(p["tok_s"] >= 0 for p in tl)
    # every rate is the tokens added over the time since the previous point
    for a, b in zip(tl, tl[1:]):
        assert b["tok_s"] == pytest.approx((b["tokens"] - a["tokens"]) / (b["t"] - a["t"]), rel=1e-3, abs=0.1)
    # 250 tokens per 20 ms at most: the rates stay in range of the loop's real speed
    assert max(busy) < 250 / 0.02 * 3
    assert all(p["gpu_util"] is None and p["gpu_mem_gb"] is None and p["rss_gb"] > 0 for p in tl)


def test_phase_spans_sit_on_the_timeline_and_match_the_phase_totals():
    s = _slow_loop(Telemetry(0, torch.device("cpu"), sample_every_s=0.05))
    assert [p["name"] for p in s.phase_spans] == ["index", "inference", "finalize"]
    for a, b in zip(s.phase_spans, s.phase_spans[1:]):
        assert a["start"] <= a["end"] <= b["start"]
    for sp in s.phase_spans:
        assert sp["end"] - sp["start"] == pytest.approx(s.phases[sp["name"]], abs=1e-3)
    assert s.timeline[-1]["t"] >= s.phase_spans[-1]["end"]
    assert s.phases["inference"] >= 12 * 0.02 and s.started_unix == pytest.approx(time.time(), abs=60)


def test_points_of_the_same_phase_accumulate_and_the_old_api_still_works():
    tel = Telemetry(3, torch.device("cpu"), sample_every_s=10)
    for _ in range(2):
        with tel.phase("inference"):
            time.sleep(0.01)
    s = tel.finish()
    assert s.rank == 3 and s.inference_s >= 0.02 and len(s.phase_spans) == 2
    assert len(s.timeline) >= 2  # first and last, even when the interval is longer than the run


def test_full_timeline_halves_and_keeps_rates_and_totals():
    tl = Timeline(every_s=0.001, max_points=16)
    for _ in range(120):
        tl.count(1, 10)
        time.sleep(0.002)
        tl.sample()  # as a phase end does; the thread samples too
    pts = tl.stop()
    assert len(pts) <= 16 and tl.every_s > 0.001  # merged at least once, the interval doubled
    assert pts[0]["t"] < 0.01 and (pts[-1]["records"], pts[-1]["tokens"]) == (120, 1200)
    assert all(a["t"] < b["t"] and a["tokens"] <= b["tokens"] for a, b in zip(pts, pts[1:]))
    for a, b in zip(pts, pts[1:]):
        assert b["tok_s"] == pytest.approx((b["tokens"] - a["tokens"]) / (b["t"] - a["t"]), rel=1e-3, abs=0.1)


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("VIRNUCDIST_SAMPLE_EVERY_S", "0.25")
    tel = Telemetry(0, torch.device("cpu"))
    assert tel.timeline.every_s == 0.25
    tel.finish()
    monkeypatch.setenv("VIRNUCDIST_SAMPLE_EVERY_S", "often")
    with pytest.raises(ValueError, match="VIRNUCDIST_SAMPLE_EVERY_S"):
        Telemetry(0, torch.device("cpu"))


@pytest.fixture
def fake_nvml(monkeypatch):
    """A stand-in for pynvml (no GPU here): utilisation 40 then 80 %, 12 GB in use."""
    state = {"util": 40}
    mod = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: ("gpu", i),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=state["util"]),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=12 * 10**9),
    )
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    return state


def test_timeline_averages_nvml_utilisation_per_interval(fake_nvml):
    gpu = GpuSampler(0, interval_s=0.005)
    assert gpu.available
    tl = Timeline(every_s=0.15, gpu=gpu)
    time.sleep(0.2)
    fake_nvml["util"] = 80
    time.sleep(0.35)
    with gpu.active():  # the inference phase: utilisation samples for the rank's mean and minimum
        time.sleep(0.05)
    pts = tl.stop()
    gpu.stop()
    utils = [p["gpu_util"] for p in pts[1:]]
    assert all(40 <= u <= 80 for u in utils) and utils[0] < 60 and utils[-1] == 80
    assert all(p["gpu_mem_gb"] == 12.0 for p in pts)
    assert gpu.samples and set(gpu.samples) == {80}


def test_run_report_writes_one_line_per_point_and_reads_back(tmp_path):
    s = _slow_loop(Telemetry(0, torch.device("cpu"), sample_every_s=0.04), batches=4)
    path = tmp_path / "run_report.json"
    write_run_report(path, [s], 1.0, {"task": "embed"})
    text = path.read_text()
    rank = json.loads(text)["ranks"][0]
    assert rank["timeline"] == s.timeline and rank["phase_spans"] == s.phase_spans
    point_lines = [line for line in text.splitlines() if line.strip().startswith('{"t": ')]
    assert len(point_lines) == len(s.timeline)


def test_process_age_counts_from_the_interpreter_start():
    import subprocess

    code = "import time; time.sleep(0.6); from virnucdist.telemetry import process_age_s; print(process_age_s())"
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 0.6 <= age < 60
