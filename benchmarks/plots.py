"""PNG plots for the benchmarks' JSON results (needs matplotlib: pip install -e ".[report]").

scaling.py and throughput.py call these to write a PNG beside their JSON; from results
already on disk:

    python benchmarks/plots.py scaling run_ws1.json run_ws2.json run_ws4.json -o scaling.png
    python benchmarks/plots.py throughput throughput.json -o throughput.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

DPI = 110


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig, fig.subplots(1, ncols)


def scaling_points(results: list[dict]) -> dict[str, list[tuple[int, float, float]]]:
    """``{task: [(world_size, inference_s, wall_s), ...]}`` sorted by world size (a later
    result of the same world size replaces an earlier one)."""
    by_task: dict[str, dict[int, tuple[float, float]]] = {}
    for res in results:
        ws = int(res["world_size"])
        for task, e in (res.get("tasks") or {}).items():
            if e.get("inference_s"):
                by_task.setdefault(task, {})[ws] = (float(e["inference_s"]), float(e.get("wall_s") or "nan"))
    return {t: [(ws, *v) for ws, v in sorted(d.items())] for t, d in by_task.items()}


def plot_scaling(results: list[dict], path: str | Path) -> Path | None:
    """Speedup and efficiency vs GPUs per task, with the ideal line, from ``benchmarks/scaling.py``
    results (one JSON dict per world size). Speedup is against the task's smallest world size
    (inference time, solid; wall time, dotted). Returns ``path``, or None (nothing written) when
    no task has two world sizes."""
    points = {t: p for t, p in scaling_points(results).items() if len(p) >= 2}
    if not points:
        return None
    fig, (sp_ax, eff_ax) = _figure(11, 4.2, ncols=2)
    sizes = sorted({ws for p in points.values() for ws, _, _ in p})
    lo = sizes[0]
    sp_ax.plot(sizes, [ws / lo for ws in sizes], color="black", ls="--", lw=1, label="ideal")
    eff_ax.axhline(100, color="black", ls="--", lw=1, label="ideal")
    for i, (task, p) in enumerate(points.items()):
        ws0, inf0, wall0 = p[0]
        x = [ws for ws, _, _ in p]
        speed = [inf0 / inf for _, inf, _ in p]
        wall = [wall0 / w for _, _, w in p]
        eff = [100 * s / (ws / ws0) for s, ws in zip(speed, x)]
        color = f"C{i}"
        sp_ax.plot(x, speed, marker="o", color=color, label=f"{task} (inference)")
        sp_ax.plot(x, wall, marker=".", ls=":", color=color, label=f"{task} (wall)")
        eff_ax.plot(x, eff, marker="o", color=color, label=task)
        for xi, s, e in zip(x, speed, eff):
            sp_ax.annotate(f"{s:.2f}x", (xi, s), textcoords="offset points", xytext=(4, -12), fontsize=8, color=color)
            eff_ax.annotate(f"{e:.0f}%", (xi, e), textcoords="offset points", xytext=(4, 4), fontsize=8, color=color)
    for ax in (sp_ax, eff_ax):
        ax.set_xlabel("GPUs per task (world size)")
        ax.set_xticks(sizes)
        ax.margins(x=0.12)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    sp_ax.set_ylabel(f"speedup vs {lo} GPU{'s' if lo > 1 else ''}")
    sp_ax.set_ylim(bottom=0)
    eff_ax.set_ylabel("efficiency % (speedup / ideal, inference)")
    eff_ax.set_ylim(0, 110)
    head = results[-1]
    what = f"{head.get('reads', '?'):,} reads of {head.get('read_length', '?')} bp" \
        if isinstance(head.get("reads"), int) else ""
    fig.suptitle(f"Scaling on {head.get('device', '?')}" + (f", {what}" if what else ""))
    fig.savefig(path, dpi=DPI)
    return Path(path)


def throughput_rows(results: dict) -> list[dict]:
    """``benchmarks/throughput.py`` JSON (ESM-2 or DNABERT-S) -> rows for :func:`plot_throughput`."""
    return [{"wl": wl, "impl": impl, "tps": r["tokens_per_s"]}
            for wl, res in (results.get("workloads") or {}).items()
            for impl, r in res.items() if isinstance(r, dict) and "tokens_per_s" in r]


def plot_throughput(rows: list[dict], path: str | Path, roofline: float | None = None) -> Path:
    """Tokens/s per implementation as bars, grouped by workload, with the roofline as a line.

    ``rows``: dicts with ``impl`` (the bar's label), ``tps`` (tokens/s) and optionally ``wl``
    (the workload; bars of one workload stand together) -- the rows ``throughput.py`` prints.
    ``roofline``: tokens/s at the GEMM peak (None or NaN: no line). A log axis when the
    rates span more than 30x. Returns ``path``."""
    workloads = list(dict.fromkeys(str(r.get("wl", "")) for r in rows))
    impls = list(dict.fromkeys(str(r["impl"]) for r in rows))
    value = {(str(r.get("wl", "")), str(r["impl"])): float(r["tps"]) for r in rows if r.get("tps") is not None}
    fig, ax = _figure(max(8.0, 1.2 + 0.55 * len(impls) * len(workloads)), 4.6)
    width = 0.8 / max(len(impls), 1)
    for j, impl in enumerate(impls):
        xs = [i + (j - (len(impls) - 1) / 2) * width for i, wl in enumerate(workloads) if (wl, impl) in value]
        ys = [value[(wl, impl)] for wl in workloads if (wl, impl) in value]
        bars = ax.bar(xs, ys, width * 0.92, color=f"C{j}", label=impl.replace("_", " "))
        labels = [f"{y:,.0f}" + (f"\n{y / roofline:.0%}" if roofline and math.isfinite(roofline) else "")
                  for y in ys]
        ax.bar_label(bars, labels, fontsize=7, padding=2)
    vals = [v for v in value.values() if v > 0]
    if roofline is not None and math.isfinite(roofline) and roofline > 0:
        ax.axhline(roofline, color="black", ls="--", lw=1.2, label=f"roofline {roofline:,.0f} tok/s")
        vals.append(roofline)
    if vals and max(vals) / min(vals) > 30:
        ax.set_yscale("log")
        ax.set_ylim(min(vals) / 2, max(vals) * 4)
    elif vals:
        ax.set_ylim(0, max(vals) * 1.2)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_ylabel("tokens/s")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncols=2)
    ax.set_title("Tokens/s per implementation" + (" (under each value: % of the roofline)"
                                                  if roofline and math.isfinite(roofline) else ""))
    fig.savefig(path, dpi=DPI)
    return Path(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["scaling", "throughput"])
    ap.add_argument("json", nargs="+", help="scaling: one JSON per world size; throughput: one JSON")
    ap.add_argument("-o", "--output", required=True, help="the PNG to write")
    args = ap.parse_args(argv)
    results = [json.loads(Path(p).read_text()) for p in args.json]
    if args.kind == "scaling":
        if plot_scaling(results, args.output) is None:
            raise SystemExit("plots.py: need results of at least two world sizes for one task")
    else:
        plot_throughput(throughput_rows(results[0]), args.output, results[0].get("roofline_tokens_per_s"))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
