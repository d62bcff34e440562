#!/usr/bin/env bash
# One device call: install the project, check the GPU stack, benchmarks, GPU tests; logs go to $OUT.
# Usage (on the GPU machine, repo root): bash benchmarks/gpu_run.sh [STEP...]
#   no STEP: env kernels_esm kernels_dnabert gputests  (~6 min expected on an H100/H200; each step has its own
#   timeout, 9.5 min worst case). Other steps: throughput sweep dnabert scaling profile, or any shell command.
# Issue 24, two device calls (each <= 9.5 min worst case, ~8 expected): `bash benchmarks/gpu_run.sh perf1` (env,
#   tokenizer rate per worker, sustained roofline, start-up, predict of 1M reads in bf16) and `bash
#   benchmarks/gpu_run.sh perf2` (GPU tests, DNABERT-S embed of 1M reads, FP8 policy curve, predict of 1M reads
#   in fp8). `perf_smoke` runs every perf step's --smoke on CPU.
set -uo pipefail
# the device returns at most 8 files: every step writes under $OUT/run, packed into $OUT/run.tgz at the end
FINAL=${OUT:-/tmp/out}; OUT=$FINAL/run; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ -d .whl ]; then  # fair-esm (the reference) travels as a wheel: the device machine has no network
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || python3 -m pip install -q --no-deps -e . 2>&1 | tail -2
[ $# -eq 0 ] && set -- env kernels_esm kernels_dnabert gputests
case "$1" in  # issue 24 groups (budgets: perf1 ~8 min, perf2 ~9 min worst case)
  perf1) set -- env tokenize_dna quant_probe roofline startup predict_1m_bf16 ;;  # timeouts: 585 s (+ env)
  perf2) set -- gputests_short dnabert_1m fp8_policies predict_1m_fp8 ;;  # timeouts sum to 560 s
  r3a) set -- env gputests profile reproducible ;;  # the rest of issues 24/25: timeouts sum to 490 s
  r3b) set -- predict_1m_fp8 train_650m ;;  # issues 24/23: 330 + TRAIN_T (export TRAIN_T=240)
  r3c) set -- samples_both ;;  # issue 21: both modes in one call (SAMPLES_PAIRS, SAMPLES_T)
esac
python3 -c "import torch; print('torch', torch.__version__)" 2>&1 | tail -1
for step in "$@"; do
  echo "=== $step $(date +%T)"
  case "$step" in
    env)
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv
      timeout 60 python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(), 'cc', torch.cuda.get_device_capability(), '_scaled_mm', hasattr(torch, '_scaled_mm'))"
      timeout 30 python3 -c "import flash_attn" 2>&1 | tail -1 ;;
    kernels_esm)  # ESM-2 3B, 10k frames of 150-bp reads: fair-esm bf16 / unfused / fused / fp8, roofline, fidelity, profiles
      timeout 270 python3 benchmarks/throughput.py --task kernels --which esm2 --num-seqs 10000 --fp32-n 1000 \
        --out "$OUT" --json "$OUT/kernels_esm2.json" 2>&1 | tee "$OUT/kernels_esm2.log" | grep -v "^\[.*{'" | tail -60 ;;
    kernels_dnabert)  # DNABERT-S, 100k 150-bp reads: eager/fused x padded SDPA / Flex / Triton ALiBi
      timeout 150 python3 benchmarks/throughput.py --task kernels --which dnabert --dna-reads 100000 --fp32-n 1000 \
        --out "$OUT" --json "$OUT/kernels_dnabert.json" 2>&1 | tee "$OUT/kernels_dnabert.log" | grep -v "^\[.*{'" | tail -40 ;;
    gputests)
      timeout 180 python3 -m pytest -q -s -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT/gputests.log" \
        | grep -E "cosine|cos min|rel error|passed|failed|error|Error|SKIP" | tail -40 ;;
    gputests_short)
      timeout 80 python3 -m pytest -q -s -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT/gputests.log" \
        | grep -E "cosine|cos min|rel error|passed|failed|error|Error|SKIP" | tail -30 ;;
    quant_probe)  # the GELU + e4m3 kernel at 65,536 x 10240: one masked 16384 block vs 8192 + 2048, warps
      timeout 30 python3 benchmarks/fp8_quant_probe.py 2>&1 | tee "$OUT/fp8_quant_probe.log" | tail -20 ;;
    tokenize_dna)  # DNABERT-S tokens/s of one loader worker on this host's CPUs (old vs new path)
      timeout 25 python3 benchmarks/tokenize_dna.py --reads 10000 2>&1 | tee "$OUT/tokenize_dna.log" | tail -4 ;;
    dnabert_1m)  # DNABERT-S embed of 1M random 150-bp reads end to end: tokens/s over inference, GPU busy %, workers
      W=/tmp/vnd-dna1m; mkdir -p $W
      timeout 80 torchrun --standalone --nproc_per_node=1 benchmarks/scaling.py --tasks dnabert --reads ${DNA_READS:-1000000} \
        --workdir $W --json "$OUT/dnabert_1m.json" 2>&1 | tee "$OUT/dnabert_1m.log" | grep -v "^W1\|\*\*\*" | tail -12
      rm -rf $W ;;
    fp8_policies)  # speed / fidelity of each FP8 policy vs bf16 and fp32: 10,000 frames, labels on 5,000 reads
      timeout 150 python3 benchmarks/fp8_policies.py --frames 10000 --label-reads 5000 --json "$OUT/fp8_policies.json" \
        --policies ${FP8_POLICIES:-all,all-bc,first2-bc,first4-bc,first4-bc-fast,first6-bc,first8-bc,edges2-bc,early-half} \
        2>&1 | tee "$OUT/fp8_policies.log" | tail -16 ;;
    roofline)  # the four layer GEMMs at ESM-2 3B shapes, sustained, with clocks and power
      timeout 70 python3 benchmarks/roofline.py --seconds 30 --fp8-seconds 10 --json "$OUT/roofline.json" 2>&1 \
        | tee "$OUT/roofline.log" | grep -v "^ " | tail -12 ;;
    startup)  # launch -> first batch, ESM-2 3B from a fair-esm .pt (11 GB, written first), library vs naive load
      timeout 120 python3 benchmarks/startup.py --workdir /tmp/vnd-startup --runs library:cold,library:warm,previous:warm \
        --json "$OUT/startup.json" 2>&1 \
        | tee "$OUT/startup.log" | tail -6
      rm -rf /tmp/vnd-startup ;;
    predict_1m_bf16|predict_1m_fp8)  # predict of 1M random 150-bp reads, chunk 300, ESM-2 3B + DNABERT-S, one GPU
      dt=${step##*_}; W=/tmp/vnd-p1m-$dt; mkdir -p $W; [ $dt = bf16 ] && lim=340 || lim=330
      if [ $dt = fp8 ] && [ -z "${VIRNUCDIST_FP8_POLICY:-}" ] && [ -f "$OUT/fp8_policies.json" ]; then  # the best measured
        pol=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('best') or '')" "$OUT/fp8_policies.json")
        [ -n "$pol" ] && export VIRNUCDIST_FP8_POLICY="$pol"; echo "fp8 policy: ${VIRNUCDIST_FP8_POLICY:-library default}"
      fi
      timeout $lim torchrun --standalone --nproc_per_node=1 benchmarks/scaling.py --tasks predict --dtype $dt \
        --reads ${PRED_READS:-1000000} --warmup-reads 0 --workdir $W --json "$OUT/predict_1m_$dt.json" 2>&1 \
        | tee "$OUT/predict_1m_$dt.log" | grep -v "^W1\|\*\*\*" | tail -12
      rm -rf $W ;;
    train_650m)  # issue 23: virnucdist train on 200k windows (150/50), ESM-2 650M + DNABERT-S random, + predict baseline
      W=/tmp/vnd-train; mkdir -p $W
      timeout ${TRAIN_T:-540} python3 benchmarks/train.py --windows ${TRAIN_WINDOWS:-200000} --workdir $W \
        --json "$OUT/train_650m.json" 2>&1 | tee "$OUT/train_650m.log" | grep -v "RANDOM WEIGHTS" | tail -30
      rm -rf $W ;;
    samples_one|samples_each|samples_both)  # issue 21: 8 samples x SAMPLES_PAIRS 150-bp pairs, one --samples launch / one each
      W=/tmp/vnd-samples; mode=${step##*_}; only="--only $mode"; lim=${SAMPLES_T:-570}; [ $mode = both ] && only=""
      timeout $lim python3 benchmarks/samples.py --random-init --esm-model esm2_t36_3B_UR50D --dnabert-model dnabert-s \
        --samples 8 --pairs ${SAMPLES_PAIRS:-50000} $only --dir $W --json "$OUT/samples_$mode.json" 2>&1 \
        | tee "$OUT/samples_$mode.log" | tail -12 ;;  # keeps $W (the data) for the other mode; --merge the two JSONs
    perf_smoke)  # every issue-24 benchmark on CPU, tiny (checks the scripts, not the GPU)
      python3 benchmarks/tokenize_dna.py --smoke | tail -3
      python3 benchmarks/fp8_policies.py --smoke --policies all,edges2 | tail -5
      python3 benchmarks/roofline.py --smoke | tail -2
      python3 benchmarks/predict_finalize.py --smoke | tail -2
      python3 benchmarks/startup.py --smoke --runs library:cold --workdir /tmp/vnd-startup-smoke | tail -2
      torchrun --standalone --nproc_per_node=1 benchmarks/scaling.py --tasks dnabert,predict --reads 100 --dtype fp32 \
        --warmup-reads 0 --esm-model esm2_t6_8M_UR50D --dna-toks 4096 --toks-per-batch 2048 2>&1 | grep -E "^==|wall" ;;
    predict_finalize)  # issue 24: predict's finalize of 1M reads on this host's CPU (no GPU), new vs FIN_BASE/src
      # FIN_BASE: a checkout of the code before the change, made beside the repo before the call, e.g.
      # `mkdir -p fin-base && git archive 8fda921 src | tar -x -C fin-base` (untracked: it travels)
      base=""; [ -d "${FIN_BASE:-fin-base}/src" ] && base="--baseline-src ${FIN_BASE:-fin-base}/src"
      timeout 240 python3 benchmarks/predict_finalize.py --reads ${FIN_READS:-1000000} --repeat 2 $base \
        --workdir /tmp/vnd-pf --json "$OUT/predict_finalize.json" 2>&1 | tee "$OUT/predict_finalize.log" | tail -5 ;;
    smoke)  # CPU-sized run of the kernels task (what CI-less machines can check)
      timeout 600 python3 benchmarks/throughput.py --task kernels --smoke --fp32-n 100 --out "$OUT" 2>&1 | tail -20 ;;
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
      timeout ${SCALE_T1:-300} torchrun --standalone --nproc_per_node=1 benchmarks/scaling.py --reads ${READS:-30000} \
        --workdir $W --json "$OUT/scaling_ws1.json" 2>&1 | tee "$OUT/scaling_ws1.log" | grep -v "^W1\|\*\*\*" | tail -25
      timeout ${SCALE_T2:-240} torchrun --standalone --nproc_per_node=2 benchmarks/scaling.py --reads ${READS:-30000} \
        --workdir $W --baseline "$OUT/scaling_ws1.json" --json "$OUT/scaling_ws2.json" 2>&1 \
        | tee "$OUT/scaling_ws2.log" | grep -v "^W1\|\*\*\*" | tail -25 ;;
    profile)  # where a bf16 forward's time goes against the sustained roofline (round 3's H100 roofline.json)
      timeout 100 python3 benchmarks/profile_esm.py --roofline benchmarks/results/round3/roofline.json \
        --json "$OUT/profile_esm.json" 2>&1 | tee "$OUT/profile_esm.txt" | grep -v "^USDT" | sed -n 1,26p ;;
    reproducible)  # issue 25: tokens/s of embed with and without --reproducible, DNABERT-S then ESM-2 3B
      timeout 210 torchrun --standalone --nproc_per_node=1 benchmarks/reproducible.py --num-seqs ${REPRO_SEQS:-6000} \
        --workdir /tmp/vnd-repro --json "$OUT/reproducible.json" 2>&1 | tee "$OUT/reproducible.log" \
        | grep -v "RANDOM\|^W1\|\*\*\*" | tail -10; rm -rf /tmp/vnd-repro ;;
    e2e)  # end to end on one GPU: embed/predict wall and finalize share, dedup, precision of calls, a report page
      W=/tmp/vnd-e2e; mkdir -p $W
      VIRNUCDIST_SAMPLE_EVERY_S=1 timeout 240 torchrun --standalone --nproc_per_node=1 benchmarks/scaling.py \
        --reads ${E2E_READS:-100000} --workdir $W --json "$OUT/e2e_ws1.json" 2>&1 | tee "$OUT/e2e_ws1.log" \
        | grep -v "^W1\|\*\*\*" | tail -30
      timeout 120 virnucdist report $W/predict_ws1 --png 2>&1 | tail -2; cp $W/predict_ws1/report* "$OUT/" 2>/dev/null
      timeout 150 python3 benchmarks/predict_fidelity.py --reads ${FID_READS:-5000} --dtypes fp32,bf16,fp8 \
        --json "$OUT/predict_fidelity.json" 2>&1 | tee "$OUT/predict_fidelity.log" | tail -4
      for d in dedup no-dedup; do
        flag=""; [ $d = no-dedup ] && flag=--no-dedup
        timeout 200 torchrun --standalone --nproc_per_node=1 benchmarks/scaling.py --tasks predict --warmup-reads 0 \
          --reads ${DUP_READS:-300000} --dup-fraction 0.3 $flag --workdir $W/dup-$d --json "$OUT/dedup_$d.json" 2>&1 \
          | tee "$OUT/dedup_$d.log" | grep -v "^W1\|\*\*\*" | tail -6
      done ;;
    *) eval "$step" ;;
  esac
done
echo "=== done $(date +%T)"
tar czf "$FINAL/run.tgz" -C "$FINAL" run && rm -rf "$OUT"; ls -la "$FINAL"
