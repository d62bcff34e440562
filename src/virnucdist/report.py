"""``virnucdist report OUTDIR``: a run's ``run_report.json`` as one self-contained HTML page.

The page (``OUTDIR/report.html``) holds the headline figures, a per-rank table and four
plots (five for ``virnucdist train``: its learning curves from ``training_log.tsv``) as inline base64 PNGs (no external resources; it opens in any browser, offline):
tokens/s over time per rank, GPU utilisation and memory over time, the phases of each
rank on a time axis, and the token balance across ranks. Plotting needs matplotlib
(``pip install "virnucdist[report]"``). Every field is read defensively: a report of a
CPU run, of one rank, of an older version or of a run that stopped early still renders,
and the page says what is missing.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = ["FIGURES", "EXTRA_FIGURES", "ReportError", "headline", "load_report", "make_figures", "render_html", "write_report"]

INSTALL_HINT = 'virnucdist report needs matplotlib: pip install "virnucdist[report]" (or: pip install matplotlib)'
# figure name -> heading on the page; --png writes OUTDIR/report-<name>.png
FIGURES = {
    "throughput": "Tokens/s over time",
    "gpu": "GPU utilisation and memory over time",
    "phases": "Phases per rank",
    "balance": "Token balance across ranks",
}
#: drawn when the run directory holds them (``virnucdist train``'s training_log.tsv)
EXTRA_FIGURES = {"learning": "Learning curves (training_log.tsv)"}
PHASE_ORDER = ("index", "model_load", "inference", "write_flush", "finalize")
PHASE_COLORS = {"index": "#8c8c8c", "model_load": "#e6a23c", "inference": "#3a7bd5", "write_flush": "#9b59b6",
                "finalize": "#2e9e5b"}
DPI = 100
WIDTH_IN = 10.0
MANY_RANKS = 8  # above this, per-rank lines get no legend


class ReportError(UserError):
    """The report cannot be made (no run_report.json, unreadable JSON, no matplotlib)."""


# --- reading ----------------------------------------------------------------------


def load_report(path: str | Path) -> tuple[dict, Path]:
    """``(report, run_report.json path)`` for a run directory or the JSON file itself."""
    path = Path(path)
    file = path / "run_report.json" if path.is_dir() else path
    if not file.is_file():
        where = path if path.is_dir() else path.parent
        raise ReportError(f"{file}: no such file; {where} holds no finished run (run_report.json is written "
                          f"when a run ends; `virnucdist inspect {where}` shows an unfinished run's state)")
    try:
        report = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"{file}: not a readable run report ({e})") from None
    if not isinstance(report, dict):
        raise ReportError(f"{file}: not a run report (a JSON object was expected)")
    return report, file


def _ranks(report: dict) -> list[dict]:
    ranks = [r for r in (report.get("ranks") or []) if isinstance(r, dict)]
    return sorted(ranks, key=lambda r: r.get("rank", 0))


def _offsets(ranks: list[dict]) -> dict[int, float]:
    """Seconds from the earliest rank's start to each rank's start (0 where unknown)."""
    starts = {r.get("rank", i): r.get("started_unix") for i, r in enumerate(ranks)}
    known = [s for s in starts.values() if s]
    first = min(known) if known else 0.0
    return {k: (s - first if s else 0.0) for k, s in starts.items()}


def _num(x: Any, fmt: str = ",.0f", unit: str = "") -> str:
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)):
        return "-" if x is None else str(x)
    return f"{format(x, fmt)}{unit}"


def _duration(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return "-"
    if s < 60:
        return f"{s:.2f} s"
    if s < 3600:
        return f"{int(s // 60)} min {s % 60:04.1f} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _count(v: Any) -> int:
    """A count that may be stored as a number or as a list of ids."""
    return len(v) if isinstance(v, (list, tuple)) else int(v) if isinstance(v, (int, float)) else 0


def headline(report: dict) -> list[tuple[str, str]]:
    """The run's headline figures as (label, value) rows; only what the report holds."""
    s = report.get("summary") or {}
    ranks = _ranks(report)
    cfg = report.get("config") or {}
    units = report.get("units") or {}
    rows: list[tuple[str, str]] = [("task", str(report.get("task", "-")))]
    model = cfg.get("model") or " + ".join(str(cfg[k]) for k in ("esm_model", "dnabert_model") if cfg.get(k))
    if model:
        rows.append(("model", f"{model}{' (random weights)' if cfg.get('random_init') else ''}"))
    if not s:
        rows.append(("state", "partial report: no summary (the run did not finish?)"))
    rows.append(("records", _num(s.get("sequences", sum(r.get("sequences", 0) for r in ranks) if ranks else None))
                 + (f" ({units['sequences']})" if units.get("sequences") else "")))
    rows.append(("tokens", _num(s.get("tokens", sum(r.get("tokens", 0) for r in ranks) if ranks else None))
                 + (f" ({units['tokens']})" if units.get("tokens") else "")))
    rows.append(("wall time", _duration(s.get("wall_s"))))
    rows.append(("tokens/s", _num(s.get("tokens_per_s")) + (" (all ranks, over the slowest rank's inference)"
                                                            if s.get("tokens_per_s") is not None else "")))
    ws = s.get("world_size") or report.get("world_size") or len(ranks) or None
    hosts = {r.get("host") for r in ranks if r.get("host")}
    rows.append(("world size", _num(ws) + (f" on {len(hosts)} host(s)" if hosts else "")))
    devices = sorted({str(r.get("device")) for r in ranks if r.get("device")})
    gpu = (report.get("versions") or {}).get("gpu")
    rows.append(("device", ", ".join(devices) + (f" ({gpu})" if gpu else "") if devices else (gpu or "-")))
    if "token_imbalance" in s:
        rows.append(("token imbalance", f"{s['token_imbalance']:.2%} (max-min over max tokens per rank); "
                                        f"inference time spread {s.get('inference_time_spread', 0):.2%}"))
    dedup = report.get("dedup")
    if isinstance(dedup, dict):
        rows.append(("dedup", f"{_num(dedup.get('distinct'))} distinct sequences computed, "
                              f"{_num(dedup.get('served_from_duplicate'))} records served from a duplicate"))
    trunc = s.get("truncated")
    tr = report.get("truncated_records") or {}
    if trunc is None and tr:
        trunc = tr.get("records")
    if trunc is not None:
        cap = tr.get("max_residues")
        rows.append(("truncated", _num(trunc) + (f" records longer than {cap} residues" if cap else " records")))
    skipped = report.get("skipped")
    if isinstance(skipped, dict):
        counts = {k: _count(v) for k, v in skipped.items()}
        rows.append(("skipped", ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if v) or "none"))
    for key, label in (("resumed_records", "resumed (already done)"), ("oom_splits", "out-of-memory splits"),
                       ("records_with_unknown_letters", "records with unknown letters")):
        if s.get(key):
            rows.append((label, _num(s[key])))
    if report.get("restart_count"):
        rows.append(("restarts", _num(report["restart_count"])))
    counts = report.get("counts")
    if isinstance(counts, dict) and counts:
        rows.append(("predictions", ", ".join(f"{k.replace('_', ' ')} {_num(v)}" for k, v in counts.items())))
    versions = report.get("versions") or {}
    if versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if k != "gpu")))
    return rows


# --- figures ----------------------------------------------------------------------


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError(INSTALL_HINT) from None
    return Figure


def _rank_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"] if n <= 10 else colormaps["viridis"]
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, color="#555555")
    ax.set_yticks([])


def _timeline(r: dict) -> list[dict]:
    return [p for p in (r.get("timeline") or []) if isinstance(p, dict) and isinstance(p.get("t"), (int, float))]


def _total_rate(ranks: list[dict], offsets: dict[int, float]):
    """All ranks' tokens/s on one time grid (from their cumulative token counts), or None."""
    import numpy as np

    curves = []
    for r in ranks:
        tl = _timeline(r)
        if len(tl) >= 2:
            t = np.array([p["t"] for p in tl], dtype=float) + offsets.get(r.get("rank", 0), 0.0)
            curves.append((t, np.array([p.get("tokens") or 0 for p in tl], dtype=float)))
    if len(curves) < 2:
        return None
    end = max(t[-1] for t, _ in curves)
    step = float(np.median(np.concatenate([np.diff(t) for t, _ in curves])))
    if not (step > 0 and end > 0):
        return None
    grid = np.linspace(0.0, end, int(min(max(end / step, 2), 1000)) + 1)
    cum = sum(np.interp(grid, t, tok, left=0.0, right=tok[-1]) for t, tok in curves)
    return grid[1:], np.diff(cum) / np.diff(grid)


def _throughput_figure(Figure, ranks, offsets):
    fig = Figure(figsize=(WIDTH_IN, 4.0), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title("Tokens/s per rank over time (rate over each sampling interval)")
    colors = _rank_colors(len(ranks))
    drawn = False
    for r, c in zip(ranks, colors):
        tl = _timeline(r)
        if len(tl) < 2:
            continue
        off = offsets.get(r.get("rank", 0), 0.0)
        ax.step([p["t"] + off for p in tl], [p.get("tok_s") or 0.0 for p in tl], where="pre", color=c,
                lw=1.2, label=f"rank {r.get('rank', '?')}")
        drawn = True
    total = _total_rate(ranks, offsets)
    if total is not None:
        ax.step(total[0], total[1], where="pre", color="black", lw=1.0, ls="--", label="all ranks")
    if not drawn:
        _no_data(ax, "no timeline in this report (a run of an older version, or one that stopped early)")
        return fig
    ax.set_xlabel("seconds since the first rank started")
    ax.set_ylabel("tokens/s")
    ax.yaxis.set_major_formatter("{x:,.0f}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if len(ranks) <= MANY_RANKS or total is not None:
        handles, labels = ax.get_legend_handles_labels()
        keep = [(h, lab) for h, lab in zip(handles, labels) if len(ranks) <= MANY_RANKS or lab == "all ranks"]
        ax.legend(*zip(*keep), loc="best", fontsize=8, ncols=min(len(keep), 5))
    return fig


def _gpu_figure(Figure, ranks, offsets):
    fig = Figure(figsize=(WIDTH_IN, 5.0), dpi=DPI, layout="constrained")
    util_ax, mem_ax = fig.subplots(2, 1, sharex=True)
    util_ax.set_title("GPU utilisation (mean over each interval, NVML)")
    mem_ax.set_title("Memory: GPU in use (solid), host RSS of the rank process (dashed)")
    colors = _rank_colors(len(ranks))
    any_util = any_mem = False
    for r, c in zip(ranks, colors):
        tl = _timeline(r)
        off = offsets.get(r.get("rank", 0), 0.0)
        label = f"rank {r.get('rank', '?')}"
        util = [(p["t"] + off, p["gpu_util"]) for p in tl if p.get("gpu_util") is not None]
        if util:
            util_ax.step(*zip(*util), where="pre", color=c, lw=1.2, label=label)
            any_util = True
        for key, ls in (("gpu_mem_gb", "-"), ("rss_gb", "--")):
            pts = [(p["t"] + off, p[key]) for p in tl if p.get(key) is not None]
            if pts:
                mem_ax.plot(*zip(*pts), color=c, ls=ls, lw=1.2, label=label if key == "rss_gb" else None)
                any_mem = True
    if any_util:
        util_ax.set_ylim(0, 105)
        util_ax.set_ylabel("GPU util %")
        util_ax.grid(alpha=0.3)
        if len(ranks) <= MANY_RANKS:
            util_ax.legend(loc="lower right", fontsize=8, ncols=min(len(ranks), 4))
    else:
        devices = {str(r.get("device", "")) for r in ranks}
        why = ("no GPU samples (CPU run)" if devices and all(d.startswith("cpu") for d in devices)
               else "no GPU samples (no NVML: pip install nvidia-ml-py, or an older report)")
        _no_data(util_ax, why)
    if any_mem:
        mem_ax.set_ylabel("GB")
        mem_ax.set_ylim(bottom=0)
        mem_ax.grid(alpha=0.3)
        if not any_util and len(ranks) <= MANY_RANKS:  # the ranks' colours, said once on the page
            mem_ax.legend(loc="lower right", fontsize=8, ncols=min(len(ranks), 4))
    else:
        _no_data(mem_ax, "no memory samples in this report")
    mem_ax.set_xlabel("seconds since the first rank started")
    return fig


def _phases_figure(Figure, ranks, offsets):
    n = max(len(ranks), 1)
    fig = Figure(figsize=(WIDTH_IN, min(1.6 + 0.45 * n, 14.0)), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title("Phases per rank on a time axis")
    if not ranks:
        _no_data(ax, "no per-rank data in this report")
        return fig
    seen: dict[str, Any] = {}
    estimated = False
    for y, r in enumerate(ranks):
        off = offsets.get(r.get("rank", 0), 0.0)
        spans = [sp for sp in (r.get("phase_spans") or []) if isinstance(sp, dict)]
        if not spans:  # an older report: durations only, drawn one after another from 0
            t, spans, estimated = 0.0, [], estimated or bool(r.get("phases"))
            phases = r.get("phases") or {}
            for name in sorted(phases, key=lambda k: PHASE_ORDER.index(k) if k in PHASE_ORDER else 99):
                spans.append({"name": name, "start": t, "end": t + phases[name]})
                t += phases[name]
        for sp in spans:
            name = str(sp.get("name"))
            color = PHASE_COLORS.get(name) or f"C{len(seen) % 10}"
            start, end = sp.get("start") or 0.0, sp.get("end") or 0.0
            bars = ax.broken_barh([(start + off, max(end - start, 0.0))], (y - 0.35, 0.7), facecolors=color,
                                  edgecolor="white", linewidth=0.5)
            seen.setdefault(name, bars)
    ax.set_yticks(range(len(ranks)), [f"rank {r.get('rank', '?')}" for r in ranks])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first rank started"
                  + (" (some ranks: phase durations only, laid end to end)" if estimated else ""))
    ax.grid(axis="x", alpha=0.3)
    if seen:
        fig.legend(seen.values(), [k.replace("_", " ") for k in seen], loc="outside lower center",
                   ncols=len(seen), fontsize=8, frameon=False)
    else:
        _no_data(ax, "no phase times in this report")
    return fig


def _balance_figure(Figure, ranks):
    fig = Figure(figsize=(WIDTH_IN, 3.6), dpi=DPI, layout="constrained")
    tok_ax, time_ax = fig.subplots(1, 2)
    if not ranks:
        _no_data(tok_ax, "no per-rank data in this report")
        time_ax.set_axis_off()
        return fig
    labels = [str(r.get("rank", "?")) for r in ranks]
    tokens = [r.get("tokens") or 0 for r in ranks]
    infer = [(r.get("phases") or {}).get("inference", 0.0) for r in ranks]
    colors = _rank_colors(len(ranks))
    imb = (max(tokens) - min(tokens)) / max(max(tokens), 1)
    tok_ax.bar(labels, tokens, color=colors)
    tok_ax.axhline(sum(tokens) / len(tokens), color="black", ls="--", lw=1, label="mean")
    tok_ax.set_title(f"tokens per rank (imbalance {imb:.2%})")
    tok_ax.yaxis.set_major_formatter("{x:,.0f}")
    tok_ax.set_xlabel("rank")
    tok_ax.legend(loc="lower right", fontsize=8)
    spread = (max(infer) - min(infer)) / max(max(infer), 1e-9)
    time_ax.bar(labels, infer, color=colors)
    time_ax.set_title(f"inference seconds per rank (spread {spread:.2%})")
    time_ax.set_xlabel("rank")
    for ax in (tok_ax, time_ax):
        ax.grid(axis="y", alpha=0.3)
        if len(ranks) > 16:
            ax.set_xticks(ax.get_xticks()[:: len(ranks) // 16 + 1])
    return fig


def make_figures(report: dict) -> dict:
    """``{name: matplotlib Figure}`` for every name in :data:`FIGURES` (Agg; no pyplot state)."""
    Figure = _figure_class()
    ranks = _ranks(report)
    offsets = _offsets(ranks)
    return {"throughput": _throughput_figure(Figure, ranks, offsets), "gpu": _gpu_figure(Figure, ranks, offsets),
            "phases": _phases_figure(Figure, ranks, offsets), "balance": _balance_figure(Figure, ranks)}


def read_training_log(path: Path) -> dict[str, list[float]]:
    """``training_log.tsv`` as columns of floats (``{}`` when absent or unreadable)."""
    try:
        lines = [ln.split("\t") for ln in path.read_text().splitlines() if ln.strip()]
        head, rows = lines[0], lines[1:]
        return {h: [float(r[i]) for r in rows] for i, h in enumerate(head)}
    except (OSError, IndexError, ValueError):
        return {}


def learning_figure(log: dict[str, list[float]], metrics: dict | None = None):
    """Loss and accuracy per epoch, training and held-out; the best epoch marked."""
    Figure = _figure_class()
    fig = Figure(figsize=(WIDTH_IN, 3.6), dpi=DPI, layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    ep = log.get("epoch", [])
    for ax, what in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.plot(ep, log.get(f"train_{what}", []), marker=".", label="training")
        ax.plot(ep, log.get(f"val_{what}", []), marker=".", label="held out")
        best = (metrics or {}).get("best_epoch")
        if best:
            ax.axvline(best, color="black", ls="--", lw=1, label=f"best epoch {best}")
        ax.set_xlabel("epoch")
        ax.set_title(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if metrics and metrics.get("auroc") is not None:
        fig.suptitle(f"held out: accuracy {metrics['accuracy']:.3f}, f1 {metrics['f1']:.3f}, "
                     f"AUROC {metrics['auroc']:.3f}")
    return fig


# --- the page ---------------------------------------------------------------------


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1060px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.1em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.where { color: #666; margin-top: 0; font-family: monospace; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { padding: 0.25em 0.8em; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
table.ranks td { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th { background: #f4f4f4; } .headline th { width: 11em; background: none; color: #555; font-weight: normal; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
footer { margin-top: 2em; color: #888; font-size: 0.8em; }
"""


def _rank_table(ranks: list[dict]) -> str:
    names = [p for p in PHASE_ORDER if any(p in (r.get("phases") or {}) for r in ranks)]
    names += sorted({p for r in ranks for p in (r.get("phases") or {})} - set(names))
    head = ["rank", "host", "device", "records", "tokens", "tokens/s (inference)", "GPU util mean / min %",
            "peak GPU mem GiB"] + [f"{p.replace('_', ' ')} s" for p in names]
    rows = []
    for r in ranks:
        ph = r.get("phases") or {}
        inf = ph.get("inference") or 0.0
        util = (f"{_num(r.get('gpu_util_mean'))} / {_num(r.get('gpu_util_min'))}"
                if r.get("gpu_util_mean") is not None else "-")
        cells = [f"rank {r.get('rank', '?')}", r.get("host", "-"), r.get("device", "-"), _num(r.get("sequences")),
                 _num(r.get("tokens")), _num((r.get("tokens") or 0) / inf if inf else None), util,
                 _num(r.get("peak_gpu_mem_gib") or None, ".2f")] + [_num(ph.get(p), ".2f") for p in names]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return ("<table class='ranks'><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "\n".join(rows) + "</table>")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def render_html(report: dict, title: str, images: dict[str, bytes]) -> str:
    """The page: headline table, per-rank table, the images inline (``data:image/png;base64``)."""
    from ._version import __version__

    ranks = _ranks(report)
    head = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in headline(report))
    parts = [
        "<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>virnucdist report: {html.escape(title)}</title><style>{_CSS}</style></head><body>",
        "<h1>virnucdist run report</h1>", f"<p class='where'>{html.escape(title)}</p>",
        f"<table class='headline'>{head}</table>",
        "<h2>Ranks</h2>", _rank_table(ranks) if ranks else "<p>no per-rank data in this report</p>",
    ]
    for name, heading in {**FIGURES, **EXTRA_FIGURES}.items():
        if name in images:
            data = base64.b64encode(images[name]).decode("ascii")
            parts += [f"<h2>{html.escape(heading)}</h2>",
                      f"<img id='fig-{name}' alt='{html.escape(heading)}' src='data:image/png;base64,{data}'>"]
    parts += [f"<footer>made by virnucdist {html.escape(__version__)} (<code>virnucdist report</code>) from "
              "run_report.json</footer>", "</body></html>"]
    return "\n".join(parts)


def write_report(path: str | Path, png: bool = False) -> Path:
    """Write ``report.html`` beside the run's ``run_report.json`` (``path``: the run directory or
    that file); with ``png``, also ``report-<name>.png`` for each of :data:`FIGURES`. Returns the
    page's path. Raises :class:`ReportError` without matplotlib or without a readable report."""
    report, file = load_report(path)
    _figure_class()  # no matplotlib: one line saying what to install, before any file is written
    out_dir = file.parent
    images = {name: _png(fig) for name, fig in make_figures(report).items()}
    log = read_training_log(out_dir / "training_log.tsv")
    if log.get("epoch"):
        try:
            metrics = json.loads((out_dir / "metrics.json").read_text())
        except (OSError, ValueError):
            metrics = None
        images["learning"] = _png(learning_figure(log, metrics))
    if png:
        for name, data in images.items():
            _atomic_write(out_dir / f"report-{name}.png", data)
    page = out_dir / "report.html"
    _atomic_write(page, render_html(report, str(out_dir.resolve()), images).encode("utf-8"))
    return page


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
