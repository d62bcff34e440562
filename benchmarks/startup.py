"""Start-up time: from launch to the first batch, ESM-2 from a fair-esm ``.pt`` on local disk.

    python benchmarks/startup.py --workdir /tmp/vnd-start --json startup.json      # GPU: ESM-2 3B (11 GB .pt)
    python benchmarks/startup.py --smoke                                            # CPU: esm2_t12, seconds

Writes a random-weight fair-esm checkpoint (fp32, fair-esm's key names and config), drops it from the
page cache (``posix_fadvise(DONTNEED)``: the first read comes from the disk, where the kernel honours it),
then runs fresh interpreters that each load it and run one warm-up batch, printing their phases
(interpreter + imports, CUDA context, model load, warm-up) and memory (peak anonymous RSS: a full fp32 copy
in host memory shows here; the mapped checkpoint's pages are file-backed and do not):

- ``library``: ``virnucdist.models.loading.load_model(path, dtype=bf16)`` (the run's path);
- ``previous`` (same-run baseline): the library's load before issue 24 (fp32 tensors assigned on the host,
  q/k/v fused there in fp32, then one ``.to(device, bf16)`` that casts on the CPU);
- ``naive``: ``torch.load`` into host memory, an fp32 model built on the CPU,
  ``load_state_dict``, then ``.to(device, bf16)`` (what fair-esm's loader does).
Each run: cold (after the fadvise) or warm (page cache), ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PROBE = r'''
import time
T0 = time.perf_counter()
import json, os, sys, threading
mode, path, dtype_name = sys.argv[1:4]
peak = [0]
def rss_anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0
def watch():
    while True:
        peak[0] = max(peak[0], rss_anon())
        time.sleep(0.005)
threading.Thread(target=watch, daemon=True).start()
import torch
from virnucdist.models.loading import load_model, read_fair_esm_checkpoint
from virnucdist.models.esm2 import PackedESM2
from virnucdist.models.adapters import ESM2Embedder
from virnucdist.models.tokenization import EsmTokenizer
t_imp = time.perf_counter()
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if dev.type == "cuda":
    torch.zeros(1, device=dev); torch.cuda.synchronize()
t_ctx = time.perf_counter()
from virnucdist.models.esm2 import ESM2Config
with torch.device("meta"):  # one-off lazy imports (meta kernels) out of the memory figure
    PackedESM2(ESM2Config(1, 32, 2))
base = rss_anon()
dtype = getattr(torch, dtype_name)
if mode == "library":
    lm = load_model(path, device=dev, dtype=dtype)
    module = lm.module
elif mode == "previous":  # the library before issue 24: fp32 tensors assigned on the host, then one .to()
    from virnucdist.models.loading import _load_strict
    from virnucdist.models.esm2 import rotary_inv_freq
    cfg, state = read_fair_esm_checkpoint(path)
    with torch.device("meta"):
        module = PackedESM2(cfg)
    _load_strict(module, state, path)
    module.inv_freq = rotary_inv_freq(cfg)
    module = module.to(device=dev, dtype=dtype).eval()
    module.inv_freq = module.inv_freq.float()
else:
    cfg, state = read_fair_esm_checkpoint(path)
    state = {k: v.clone() for k, v in state.items()}  # torch.load without mmap: the file in host memory
    module = PackedESM2(cfg)
    module.load_state_dict({k: v for k, v in state.items() if not k.startswith(PackedESM2.UNUSED_PREFIXES)},
                           strict=False)
    del state
    module = module.to(device=dev, dtype=dtype).eval()
    module.inv_freq = module.inv_freq.float()
if dev.type == "cuda":
    torch.cuda.synchronize()
t_load = time.perf_counter()
peak_load = peak[0]
from virnucdist.packing import pack_token_arrays
import numpy as np
rng = np.random.default_rng(0)
tok = EsmTokenizer()
arrays = [tok.encode("".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=50))) for _ in range(64)]
pb = pack_token_arrays(arrays, range(64)).to(dev)
with torch.inference_mode():
    emb = module.embed(pb.tokens, pb.positions, pb.seg, pb.cu_seqlens, pb.max_seqlen)
    float(emb.float().sum())
t_first = time.perf_counter()
dtypes = sorted({str(p.dtype) for p in module.parameters()})
devices = sorted({str(p.device) for p in module.parameters()})
print(json.dumps({"imports_s": t_imp - T0, "cuda_init_s": t_ctx - t_imp, "load_s": t_load - t_ctx,
                  "warmup_s": t_first - t_load, "in_process_s": t_first - T0,
                  "peak_anon_gb_during_load": (peak_load - base) / 1e9, "param_dtypes": dtypes,
                  "param_devices": devices, "gpu_peak_gb": (torch.cuda.max_memory_allocated() / 1e9
                                                             if dev.type == "cuda" else 0.0)}))
'''


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="esm2_t36_3B_UR50D")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--workdir", default="/tmp/vnd-startup")
    ap.add_argument("--runs", default="library:cold,previous:cold,library:warm,previous:warm",
                    help="MODE:CACHE list; modes library, previous, naive (slow: random init of the model on the "
                         "CPU first); cache cold (dropped from the page cache first) or warm")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    from virnucdist.models.esm2 import ESM2Config
    from virnucdist.models.random_init import random_esm2

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _formats import save_fair_esm_checkpoint  # tests/_formats.py: fair-esm's .pt writer

    if args.smoke:
        args.model = "esm2_t12_35M_UR50D"
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"{args.model}.pt"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    if not ckpt.exists():
        t0 = time.perf_counter()
        model = random_esm2(ESM2Config.from_name(args.model), 0, dev, torch.float32)
        save_fair_esm_checkpoint(model, ckpt)
        del model
        print(f"[{name}] wrote {ckpt} ({ckpt.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.1f} s",
              flush=True)
    res = {"device": name, "torch": torch.__version__, "model": args.model, "checkpoint_gb": ckpt.stat().st_size / 1e9,
           "runs": []}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1] / "src"),
                                                                     os.environ.get("PYTHONPATH")]))}
    for run in args.runs.split(","):
        mode, _, cache = run.partition(":")
        if cache == "cold":
            drop_cache(ckpt)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", PROBE, mode, str(ckpt), args.dtype], env=env,
                             capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode:
            print(f"[{name}] {mode} {cache}: failed\n{out.stderr[-2000:]}", flush=True)
            continue
        r = {"mode": mode, "cache": cache, "launch_to_first_batch_s": wall,
             **json.loads(out.stdout.strip().splitlines()[-1])}
        res["runs"].append(r)
        print(f"[{name}] {mode:8s} {cache}: launch -> first batch {wall:.2f} s (imports {r['imports_s']:.2f}, "
              f"CUDA {r['cuda_init_s']:.2f}, load {r['load_s']:.2f}, warm-up {r['warmup_s']:.2f}); peak anonymous "
              f"host memory during load +{r['peak_anon_gb_during_load']:.2f} GB (checkpoint "
              f"{res['checkpoint_gb']:.2f} GB fp32); params {r['param_dtypes']} on {r['param_devices']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
