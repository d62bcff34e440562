"""What a run directory (or one HDF5 file) holds: for ``virnucdist inspect``."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

__all__ = ["describe", "format_description"]


def _h5_summary(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        out = {"file": str(path), "datasets": {k: list(f[k].shape) for k in f.keys()},
               "attrs": {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}}
        if "embeddings" in f:
            out["records"], out["dim"] = int(f["embeddings"].shape[0]), int(f["embeddings"].shape[1])
    return out


def describe(path: str | Path) -> dict:
    """A dict describing a run directory or an ``.h5`` file (final output or shard)."""
    path = Path(path)
    if path.is_file():
        return {"kind": "file", **_h5_summary(path)}
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such run directory or file")
    d: dict = {"kind": "run", "dir": str(path)}
    manifest = path / "run.json"
    if manifest.exists():
        d["manifest"] = json.loads(manifest.read_text())
    final = path / "embeddings.h5"
    if final.exists():
        d["output"] = _h5_summary(final)
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv", "read_summary.tsv"):
        p = path / name
        if p.exists():
            with open(p) as fh:
                d.setdefault("predict_outputs", {})[name] = sum(1 for _ in fh) - 1
    if (path / "metrics.json").exists() and (path / "classifier.pth").exists():  # virnucdist train
        m = json.loads((path / "metrics.json").read_text())
        d["train_outputs"] = {k: m.get(k) for k in ("frames", "held_out_rows", "accuracy", "f1", "auroc",
                                                     "best_epoch", "epochs_run", "predict_with")}
    report = path / "run_report.json"
    if report.exists():
        rep = json.loads(report.read_text())
        d["report"] = {"summary": rep.get("summary"), "world_size": rep.get("world_size"),
                       "restart_count": rep.get("restart_count"), "versions": rep.get("versions"),
                       "phases_rank0": (rep.get("ranks") or [{}])[0].get("phases")}
    shards = sorted((path / "shards").glob("shard-*.h5")) if (path / "shards").is_dir() else []
    committed = 0
    unreadable = [str(p) for p in sorted((path / "shards").glob("*.corrupt"))] if shards else []
    for s in shards:
        try:
            with h5py.File(s, "r") as f:
                committed += int(f.attrs.get("committed", 0))
        except OSError:
            unreadable.append(str(s))
    d["shards"] = {"files": len(shards), "committed_records": committed, "unreadable": unreadable}
    total = d.get("manifest", {}).get("records")
    d["state"] = ("finished" if final.exists() or "predict_outputs" in d or "train_outputs" in d
                  else f"resumable: {committed} of {total} records committed" if total is not None
                  else "no run here")
    return d


def format_description(d: dict) -> str:
    if d["kind"] == "file":
        lines = [f"{d['file']}: {d.get('records', '?')} records x {d.get('dim', '?')}"]
        lines += [f"  dataset {k}: {v}" for k, v in d["datasets"].items()]
        lines += [f"  {k}: {v}" for k, v in d["attrs"].items()]
        return "\n".join(lines)
    lines = [f"run {d['dir']}: {d['state']}"]
    m = d.get("manifest")
    if m:
        model = m.get("model") or {k: v for k, v in m.items() if k.endswith("model")}
        lines.append(f"  inputs: {m.get('records')} records, fingerprint {str(m.get('input_fingerprint'))[:16]}...")
        lines.append(f"  model: {model}; dtype {m.get('dtype')}")
    o = d.get("output")
    if o:
        a = o["attrs"]
        lines.append(f"  embeddings.h5: {o.get('records')} x {o.get('dim')} ({a.get('model')}, {a.get('pooling')}, "
                     f"random_init={a.get('random_init')})")
    for name, n in (d.get("predict_outputs") or {}).items():
        lines.append(f"  {name}: {n} rows")
    t = d.get("train_outputs")
    if t:
        lines.append(f"  classifier.pth: trained on {t['frames']} frames; held out {t['held_out_rows']}: accuracy "
                     f"{t['accuracy']:.4f}, f1 {t['f1']:.4f}, auroc {t['auroc']} (best epoch {t['best_epoch']} of "
                     f"{t['epochs_run']}); predict with {t['predict_with']}")
    r = d.get("report")
    if r and r.get("summary"):
        s = r["summary"]
        lines.append(f"  report: world size {s.get('world_size')}, {s.get('sequences')} sequences, {s.get('tokens')} "
                     f"tokens, {s.get('tokens_per_s', 0):,.0f} tokens/s, imbalance {s.get('token_imbalance', 0):.2%}, "
                     f"wall {s.get('wall_s', 0):.1f} s, restarts {r.get('restart_count')}")
    sh = d["shards"]
    lines.append(f"  shards: {sh['files']} file(s), {sh['committed_records']} committed records"
                 + (f", {len(sh['unreadable'])} unreadable" if sh["unreadable"] else ""))
    return "\n".join(lines)
