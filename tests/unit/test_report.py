"""`virnucdist report`: one self-contained HTML page (inline PNGs) from a run's run_report.json."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from virnucdist.cli import main
from virnucdist.data.fasta import write_fasta
from virnucdist.data.index import read_fasta

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "proteins.fa"
IMG = re.compile(r"<img [^>]*src='data:image/png;base64,([A-Za-z0-9+/=]+)'")


def _decode(png: bytes):
    mimage = pytest.importorskip("matplotlib.image")
    return mimage.imread(io.BytesIO(png), format="png")


def _inline_images(page: str) -> list:
    return [_decode(base64.b64decode(m)) for m in IMG.findall(page)]


def _external_refs(page: str) -> list[str]:
    return re.findall(r"(?:src|href)\s*=\s*['\"]?\s*(?:https?:)?//", page, flags=re.I)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One CPU run (world size 1) of the bundled example's first 48 records, as a user starts it."""
    work = tmp_path_factory.mktemp("report_run")
    fasta = work / "proteins.fa"
    write_fasta(fasta, [(r.id, r.seq) for r in list(read_fasta(EXAMPLE))[:48]])
    out = work / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", VIRNUCDIST_SAMPLE_EVERY_S="0.2")
    p = subprocess.run([sys.executable, "-m", "virnucdist.embed", str(fasta), "--model", "esm2_t6_8M_UR50D",
                        "--random-init", "-o", str(out), "--device", "cpu", "--num-workers", "0",
                        "--toks-per-batch", "1024", "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return out


def synthetic_report(world_size: int, gpu: bool = True, points: int = 40, every: float = 5.0) -> dict:
    """A hand-built multi-rank report with timelines, phase spans and GPU samples."""
    ranks = []
    for r in range(world_size):
        rate, tokens, tl = 40000.0 * (1 - 0.15 * r), 0, []
        for i in range(points):
            t = i * every
            busy = 4 * every < t <= (points - 3 - r) * every
            tokens += int(rate * every) if busy else 0
            tl.append({"t": t, "records": tokens // 90, "tokens": tokens, "tok_s": rate if busy else 0.0,
                       "gpu_util": (92.0 - 3 * r if busy else 3.0) if gpu else None,
                       "gpu_mem_gb": (30.0 + r if i else 0.5) if gpu else None, "rss_gb": 2.5 + 0.01 * i})
        end = tl[-1]["t"]
        spans = [("index", 0.0, 1.0), ("model_load", 1.0, 4 * every), ("inference", 4 * every, end - 3 * every),
                 ("write_flush", end - 3 * every, end - 2.5 * every), ("finalize", end - 2.5 * every, end)]
        ranks.append({"rank": r, "host": f"node{r // 4}", "device": f"cuda:{r % 4}" if gpu else "cpu",
                      "sequences": tokens // 90, "tokens": tokens, "started_unix": 1.7e9 + 0.3 * r,
                      "phases": {n: b - a for n, a, b in spans}, "gpu_util_mean": 90.0 - r if gpu else None,
                      "gpu_util_min": 60.0 if gpu else None, "peak_gpu_mem_gib": 28.0 if gpu else 0.0,
                      "phase_spans": [{"name": n, "start": a, "end": b} for n, a, b in spans], "timeline": tl})
    tokens = [r["tokens"] for r in ranks]
    return {"task": "embed", "config": {"model": "esm2_t36_3B_UR50D", "random_init": True},
            "versions": {"virnucdist": "0.1.0", "torch": "2.x", "gpu": "NVIDIA H100" if gpu else None},
            "summary": {"world_size": world_size, "wall_s": points * every, "sequences": sum(tokens) // 90,
                        "tokens": sum(tokens), "tokens_per_s": 123456.0, "truncated": 2,
                        "token_imbalance": (max(tokens) - min(tokens)) / max(tokens), "inference_time_spread": 0.05},
            "world_size": world_size, "ranks": ranks, "skipped": {"empty_sequence": ["a", "b", "c"]},
            "truncated_records": {"records": 2, "max_residues": 1022}, "dedup": {"distinct": 900,
                                                                                 "served_from_duplicate": 77}}


def _write(tmp_path: Path, report: dict) -> Path:
    (tmp_path / "run_report.json").write_text(json.dumps(report))
    return tmp_path


def test_cpu_run_page_is_self_contained_and_names_every_rank(cpu_run):
    pytest.importorskip("matplotlib")
    from virnucdist.report import FIGURES, make_figures

    assert main(["report", str(cpu_run)]) == 0
    page = (cpu_run / "report.html").read_text()
    assert not _external_refs(page) and "<script" not in page and "<link" not in page
    images = _inline_images(page)
    assert len(images) == len(FIGURES)
    assert all(im.shape[0] > 0 and im.shape[1] > 0 for im in images)
    report = json.loads((cpu_run / "run_report.json").read_text())
    assert report["ranks"] and all(f"rank {r['rank']}</td>" in page for r in report["ranks"])
    assert "embed" in page and f"{report['summary']['sequences']:,}" in page
    gpu_texts = [t.get_text() for ax in make_figures(report)["gpu"].axes for t in ax.texts]
    assert "no GPU samples (CPU run)" in gpu_texts


def test_cpu_run_report_holds_a_timeline_and_phase_spans(cpu_run):
    r = json.loads((cpu_run / "run_report.json").read_text())["ranks"][0]
    tl, spans = r["timeline"], r["phase_spans"]
    assert len(tl) >= 2 and tl[0]["t"] <= spans[0]["start"] < 0.5
    assert all(a["t"] < b["t"] for a, b in zip(tl, tl[1:]))
    assert all(p["gpu_util"] is None and p["rss_gb"] > 0 for p in tl)
    assert [s["name"] for s in spans][:3] == ["index", "model_load", "inference"]
    assert all(0 <= s["start"] <= s["end"] <= tl[-1]["t"] for s in spans)
    inf = next(s for s in spans if s["name"] == "inference")
    assert inf["end"] - inf["start"] == pytest.approx(r["phases"]["inference"], abs=1e-3)


def test_cpu_run_timeline_counts_every_record(cpu_run):
    r = json.loads((cpu_run / "run_report.json").read_text())["ranks"][0]
    last = r["timeline"][-1]
    assert (last["records"], last["tokens"]) == (r["sequences"], r["tokens"])
    assert any(p["tok_s"] > 0 for p in r["timeline"])


def test_png_files_decode_at_the_figure_size(cpu_run):
    pytest.importorskip("matplotlib")
    from virnucdist.report import DPI, FIGURES, make_figures

    assert main(["report", str(cpu_run), "--png"]) == 0
    figs = make_figures(json.loads((cpu_run / "run_report.json").read_text()))
    inline = _inline_images((cpu_run / "report.html").read_text())
    for (name, fig), im_inline in zip(figs.items(), inline):
        im = _decode((cpu_run / f"report-{name}.png").read_bytes())
        w, h = fig.get_size_inches() * DPI
        assert im.shape[:2] == (round(h), round(w)) == im_inline.shape[:2], name
    assert set(figs) == set(FIGURES)


def test_synthetic_two_gpu_ranks(tmp_path):
    pytest.importorskip("matplotlib")
    from virnucdist.report import headline, make_figures, write_report

    rep = synthetic_report(2)
    page = write_report(_write(tmp_path, rep)).read_text()
    assert "rank 0</td>" in page and "rank 1</td>" in page
    assert len(_inline_images(page)) == 4 and not _external_refs(page)
    rows = dict(headline(rep))
    assert "900 distinct" in rows["dedup"] and "77 records served" in rows["dedup"]
    assert rows["skipped"] == "3 empty sequence" and rows["truncated"].startswith("2 records longer than 1022")
    figs = make_figures(rep)
    assert [t.get_text() for t in figs["phases"].axes[0].get_yticklabels()] == ["rank 0", "rank 1"]
    util_ax = figs["gpu"].axes[0]
    assert not util_ax.texts and len(util_ax.lines) == 2  # one utilisation line per rank, no "no samples" note
    labels = figs["throughput"].axes[0].get_legend_handles_labels()[1]
    assert labels == ["rank 0", "rank 1", "all ranks"]
    total = figs["throughput"].axes[0].lines[-1].get_ydata()
    assert max(total) == pytest.approx(40000 + 34000, rel=0.05)  # both ranks at full rate at once


def test_many_ranks_and_one_rank_render(tmp_path):
    pytest.importorskip("matplotlib")
    from virnucdist.report import write_report

    for ws in (1, 12):
        d = tmp_path / f"ws{ws}"
        d.mkdir()
        page = write_report(_write(d, synthetic_report(ws, gpu=ws > 1, points=12))).read_text()
        assert all(f"rank {r}</td>" in page for r in range(ws))
        assert len(_inline_images(page)) == 4


@pytest.mark.parametrize("report", [
    {},
    {"task": "embed", "ranks": [{"rank": 0, "phases": {"index": 0.1, "model_load": 2.0}}]},
    {"task": "predict", "world_size": 2, "ranks": [{"rank": 1, "timeline": [{"t": 0.0}]}, {"rank": 0}],
     "summary": None, "counts": {"reads": 10}},
], ids=["empty", "older-no-timeline", "crashed"])
def test_partial_reports_render(tmp_path, report):
    pytest.importorskip("matplotlib")
    from virnucdist.report import write_report

    page = write_report(_write(tmp_path, report)).read_text()
    assert "partial report" in page and len(_inline_images(page)) == 4
    assert all(f"rank {r['rank']}</td>" in page for r in report.get("ranks", []))


def test_no_run_report_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run_report.json" in err[0] and str(tmp_path) in err[0]


def test_without_matplotlib_one_line_says_what_to_install(tmp_path):
    _write(tmp_path, synthetic_report(1))
    code = ("import sys; sys.modules['matplotlib'] = None; from virnucdist.cli import main; "
            f"sys.exit(main(['report', {str(tmp_path)!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install" in lines[0] and "virnucdist[report]" in lines[0], p.stderr
    assert not (tmp_path / "report.html").exists()


def _browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(_browser() is None, reason="no chromium / chromium-browser / google-chrome installed")
def test_page_renders_in_headless_chromium(tmp_path):
    pytest.importorskip("matplotlib")
    from virnucdist.report import write_report

    page = write_report(_write(tmp_path, synthetic_report(2)))
    flags = [_browser(), "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', dom.stdout)) == 4
    assert "rank 1</td>" in dom.stdout
    shot = tmp_path / "shot.png"
    p = subprocess.run([*flags, "--window-size=1100,2600", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    im = _decode(shot.read_bytes())
    assert im.shape[:2] == (2600, 1100)
    assert im[..., :3].std() > 0.05  # text and plots, not a blank page


# --- the benchmarks' plots (benchmarks/plots.py) ----------------------------------------

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@pytest.fixture
def plots(monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(RESULTS.parent))
    import plots

    return plots


def test_scaling_plot_from_two_world_sizes(plots, tmp_path):
    runs = [json.loads((RESULTS / f"scaling_ws{n}_h200x2.json").read_text()) for n in (2, 1)]
    pts = plots.scaling_points(runs)
    assert set(pts) == {"esm2", "dnabert", "predict"}
    for task, p in pts.items():
        assert [ws for ws, _, _ in p] == [1, 2]
        assert p[0][1] / p[1][1] == pytest.approx(runs[0]["tasks"][task]["speedup"])  # what scaling.py printed
    png = plots.plot_scaling(runs, tmp_path / "scaling.png")
    im = _decode(png.read_bytes())
    assert im.shape[:2] == (round(4.2 * plots.DPI), round(11 * plots.DPI))
    assert plots.plot_scaling(runs[:1], tmp_path / "one.png") is None and not (tmp_path / "one.png").exists()


@pytest.mark.parametrize("name", ["throughput_esm2_3b_h100", "throughput_dnabert_h200_120k"])
def test_throughput_plot(plots, tmp_path, name):
    res = json.loads((RESULTS / f"{name}.json").read_text())
    rows = plots.throughput_rows(res)
    assert {r["wl"] for r in rows} == set(res["workloads"]) and all(r["tps"] > 0 for r in rows)
    png = plots.plot_throughput(rows, tmp_path / "tp.png", res.get("roofline_tokens_per_s"))
    im = _decode(png.read_bytes())
    assert im.shape[0] == round(4.6 * plots.DPI) and im.shape[1] >= 8 * plots.DPI
    plots.plot_throughput([{"impl": "x", "tps": 10.0}], tmp_path / "nan.png", float("nan"))  # CPU: no roofline
    assert _decode((tmp_path / "nan.png").read_bytes()).shape[0] > 0
