"""The sustained roofline: ESM-2 3B's four layer GEMMs back to back for as long as a real run lasts,
with the GPU's SM clock, power and temperature read alongside (nvidia-smi every 0.5 s).

    python benchmarks/roofline.py --seconds 45 --fp8-seconds 25 --json roofline.json   # GPU
    python benchmarks/roofline.py --smoke                                              # CPU, seconds

One "layer" = qkv [T, d] x [d, 3d], out_proj [d, d], fc1 [d, 4d], fc2 [4d, d] with their biases (bf16
``F.linear``; FP8: rowwise-scaled e4m3 ``torch._scaled_mm``, fp32 accumulation), T = ``--tokens``.
Prints the rate per ~5-s window (TFLOP/s and the ESM-2 3B tokens/s it allows: 2 x 12 d^2 x layers FLOPs
per token), the first window (what a short probe sees) against the mean of the rest, clocks and power
per window, and each GEMM's rate when hot, with and without the bias epilogue, and with a packed batch's
row count (``--odd`` rows fewer: not a multiple of 128).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table  # noqa: E402

QUERY = "clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"


class SmiSampler:
    """``nvidia-smi`` in loop mode in the background: (t, sm MHz, W, C, throttle reasons) rows."""

    def __init__(self, index: int = 0, every_ms: int = 500):
        self.rows: list[tuple] = []
        self.t0 = time.perf_counter()
        try:
            self.proc = subprocess.Popen(["nvidia-smi", "-i", str(index), f"--query-gpu={QUERY}",
                                          "--format=csv,noheader,nounits", f"-lms={every_ms}"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except (OSError, ValueError):
            self.proc = None
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            try:
                self.rows.append((time.perf_counter() - self.t0, float(parts[0]), float(parts[1]), float(parts[2]),
                                  parts[3]))
            except (ValueError, IndexError):
                pass

    def window(self, a: float, b: float) -> dict:
        rows = [r for r in self.rows if a <= r[0] - 0 <= b]
        if not rows:
            return {}
        return {"sm_mhz": sum(r[1] for r in rows) / len(rows), "sm_mhz_min": min(r[1] for r in rows),
                "power_w": sum(r[2] for r in rows) / len(rows), "temp_c": max(r[3] for r in rows),
                "throttle": sorted({r[4] for r in rows})}

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()


def make_gemms(dev, t: int, d: int, fp8: bool):
    shapes = {"qkv": (d, 3 * d), "out": (d, d), "fc1": (d, 4 * d), "fc2": (4 * d, d)}
    g = {}
    for name, (k, n) in shapes.items():
        a = torch.randn(t, k, device=dev, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5
        b = torch.randn(n, device=dev, dtype=torch.bfloat16)
        if fp8:
            aq, wq = a.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
            sa, sb = torch.rand(t, 1, device=dev) + 0.5, torch.rand(1, n, device=dev) + 0.5

            def fn(bias=True, aq=aq, wq=wq, sa=sa, sb=sb, b=b):
                return torch._scaled_mm(aq, wq.t(), scale_a=sa, scale_b=sb, bias=b if bias else None,
                                        out_dtype=torch.bfloat16)
        else:
            def fn(bias=True, a=a, w=w, b=b):
                return F.linear(a, w, b if bias else None)
        g[name] = (fn, 2 * t * k * n)
    return g


def timed(dev, fn, iters: int) -> float:
    if dev.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return time.perf_counter() - t0
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(iters):
        fn()
    e1.record()
    e1.synchronize()
    return e0.elapsed_time(e1) / 1e3


def sustained(dev, gemms: dict, seconds: float, window_s: float, smi: SmiSampler | None, flops_per_token: float,
              odd: dict | None = None):
    layer = lambda: [fn() for fn, _ in gemms.values()]  # noqa: E731
    flops = sum(f for _, f in gemms.values())
    layer()
    # iterations per window from one probe
    probe = timed(dev, layer, 3) / 3
    per_window = max(1, int(window_s / max(probe, 1e-6)))
    windows, t_start = [], time.perf_counter()
    while time.perf_counter() - t_start < seconds:
        a = time.perf_counter() - (smi.t0 if smi else 0)
        s = timed(dev, layer, per_window)
        b = time.perf_counter() - (smi.t0 if smi else 0)
        tf = flops * per_window / s / 1e12
        w = {"t_s": round(time.perf_counter() - t_start, 1), "tflops": tf,
             "tokens_per_s": tf * 1e12 / flops_per_token, **(smi.window(a, b) if smi else {})}
        windows.append(w)
    rest = windows[1:] or windows
    hot = {}
    for name, (fn, f) in gemms.items():
        it = max(3, int(0.5 / max(timed(dev, fn, 2) / 2, 1e-6)))
        hot[name] = {"tflops_bias": f * it / timed(dev, fn, it) / 1e12,
                     "tflops_no_bias": f * it / timed(dev, lambda: fn(bias=False), it) / 1e12}
    if odd:  # the same GEMMs with a packed batch's row count (not a multiple of 128), hot
        for name, (fn, f) in odd.items():
            it = max(3, int(0.5 / max(timed(dev, fn, 2) / 2, 1e-6)))
            hot[name]["tflops_odd_rows"] = f * it / timed(dev, fn, it) / 1e12
    return {"windows": windows, "first_window_tflops": windows[0]["tflops"],
            "sustained_tflops": sum(w["tflops"] for w in rest) / len(rest),
            "min_window_tflops": min(w["tflops"] for w in rest), "per_gemm_hot": hot}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=45.0, help="bf16 sustained run")
    ap.add_argument("--fp8-seconds", type=float, default=25.0, help="FP8 sustained run (0: none)")
    ap.add_argument("--tokens", type=int, default=65536, help="rows of every GEMM (the packed batch)")
    ap.add_argument("--dim", type=int, default=2560)
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--window", type=float, default=5.0)
    ap.add_argument("--odd", type=int, default=125, help="also time each GEMM hot with this many rows fewer (a "
                                                         "packed batch is rarely a multiple of 128 tokens); 0: no")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke or dev.type != "cuda":
        args.tokens, args.dim, args.seconds, args.fp8_seconds, args.window, args.odd = 256, 64, 1.0, 0.0, 0.25, 3
    from virnucdist.models.fp8 import fp8_supported

    name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    smi = SmiSampler(torch.cuda.current_device()) if dev.type == "cuda" else None
    fpt = 2 * 12 * args.dim**2 * args.layers
    res = {"device": name, "torch": torch.__version__, "tokens": args.tokens, "dim": args.dim,
           "flops_per_token": fpt, "runs": {}}
    runs = [("bf16", False, args.seconds)]
    if args.fp8_seconds > 0 and fp8_supported(dev):
        runs.append(("fp8", True, args.fp8_seconds))
    with torch.inference_mode():
        for label, fp8, secs in runs:
            odd = make_gemms(dev, args.tokens - args.odd, args.dim, fp8) if args.odd else None
            r = res["runs"][label] = sustained(dev, make_gemms(dev, args.tokens, args.dim, fp8), secs, args.window,
                                               smi, fpt, odd)
            del odd
            print(f"[{name}] {label}: {len(r['windows'])} windows of ~{args.window:.0f} s")
            print(table(r["windows"], [("t_s", "t s", ".1f"), ("tflops", "TFLOP/s", ".0f"),
                                       ("tokens_per_s", "tokens/s", ",.0f"), ("sm_mhz", "SM MHz", ".0f"),
                                       ("sm_mhz_min", "min MHz", ".0f"), ("power_w", "power W", ".0f"),
                                       ("temp_c", "max C", ".0f")]))
            print(f"[{name}] {label}: first window {r['first_window_tflops']:.0f} TFLOP/s, sustained (mean of the "
                  f"rest) {r['sustained_tflops']:.0f}, slowest window {r['min_window_tflops']:.0f} -> roofline "
                  f"{r['sustained_tflops'] * 1e12 / fpt:,.0f} tokens/s of ESM-2 3B; throttle reasons "
                  f"{sorted({x for w in r['windows'] for x in w.get('throttle', [])})}")
            print(f"[{name}] {label} per GEMM when hot (TFLOP/s, bias epilogue / none / bias with "
                  f"{args.tokens - args.odd} rows): " + ", ".join(
                      f"{k} {v['tflops_bias']:.0f}/{v['tflops_no_bias']:.0f}/{v.get('tflops_odd_rows', float('nan')):.0f}"
                      for k, v in r["per_gemm_hot"].items()), flush=True)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    if smi:
        smi.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
