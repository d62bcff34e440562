#!/usr/bin/env bash
# One device call: install the project, check the GPU stack, run GPU tests, benchmarks.
# Usage (on the GPU machine, repo root): bash benchmarks/gpu_run.sh STEP... ; results go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || python3 -m pip install -q --no-deps -e . 2>&1 | tail -2
for step in "$@"; do
  echo "=== $step $(date +%T)"
  case "$step" in
    env)
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
      python3 -c "import torch, inspect; from torch.nn.attention.varlen import varlen_attn; print(torch.__version__, torch.cuda.get_device_name()); print(inspect.signature(varlen_attn))"
      python3 -c "import flash_attn" 2>&1 | tail -1 ;;
    gputests)
      python3 -m pytest -q -s tests/gpu 2>&1 | tee "$OUT/gputests.log" | tail -30 ;;
    throughput)
      torchrun --standalone --nproc_per_node=1 benchmarks/throughput.py --model esm2_t36_3B_UR50D --num-seqs 10000 \
        --fp32-n 1000 --json "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.log" | grep -v "done:" ;;
    sweep)
      for t in 32768 131072; do
        torchrun --standalone --nproc_per_node=1 benchmarks/throughput.py --model esm2_t36_3B_UR50D --num-seqs 10000 \
          --workloads a,b --skip-baselines --toks-per-batch $t 2>&1 | grep "virnucdist"
      done
      ;;
    dnabert)
      torchrun --standalone --nproc_per_node=1 benchmarks/throughput.py --task dnabert --json "$OUT/dnabert.json" \
        2>&1 | tee "$OUT/dnabert.log" | grep -v "done:" ;;
    scaling)
      W=/tmp/vnd-scaling; mkdir -p $W
      torchrun --standalone --nproc_per_node=1 benchmarks/scaling.py --reads ${READS:-30000} --workdir $W \
        --json "$OUT/scaling_ws1.json" 2>&1 | tee "$OUT/scaling_ws1.log" | grep -v "^W1\|\*\*\*"
      torchrun --standalone --nproc_per_node=2 benchmarks/scaling.py --reads ${READS:-30000} --workdir $W \
        --baseline "$OUT/scaling_ws1.json" --json "$OUT/scaling_ws2.json" 2>&1 | tee "$OUT/scaling_ws2.log" | grep -v "^W1\|\*\*\*" ;;
    profile)
      python3 benchmarks/profile_esm.py --toks-per-batch 65536 2>&1 | tee "$OUT/profile.txt" | head -45 ;;
    *) eval "$step" ;;
  esac
done
