#!/usr/bin/env bash
# The benchmark suite, one variant after another (about 15–20 minutes on 2 idle cores).
#
#   bash benchmarks/run_all.sh                       # rows → docs/BENCHMARKS.md
#   MARKDOWN=/tmp/bench.md bash benchmarks/run_all.sh
#   SMOKE=1 bash benchmarks/run_all.sh               # tiny counts, rows → /tmp (checks the plumbing only)
#   DRY_RUN=1 bash benchmarks/run_all.sh             # print the commands
#
# Environment: MARKDOWN (results file), OUT (JSON lines of this run), REPEATS (3), XLA (1: also the
# jit_compile=True rows), TORCH_COMPILE (1: also the torch.compile row), SAMPLERS ("ddpm ddim dpmpp_2m"),
# BF16_SAMPLERS ("dpmpp_2m": also sampled under mixed_bfloat16), TIMED_STEPS (30), WARMUP_STEPS (5), MAX_WAIT_IDLE_S (0: seconds to wait for a quiet machine
# before each timed section), EXTRA_REPEATS (2 for training, 1 for sampling by default).
# Every variant runs in its own process (clean peak RSS, compile time and graph caches);
# tfdiffusion and the plain Keras port alternate so that a drift in the machine's load
# affects both. A failed variant is reported and the suite goes on; the exit code is 1 if
# any failed. At the end, benchmarks/summarize_run.py turns this run's JSON lines into the
# ratios and the targets of issues 7 and 16 in the "Run summary" table.
set -uo pipefail
cd "$(dirname "$0")/.."

STAMP=$(date -u +%Y%m%d-%H%M%S)
if [[ "${SMOKE:-0}" == 1 ]]; then
  MARKDOWN=${MARKDOWN:-/tmp/tfdiffusion-bench-smoke.md}
  REPEATS=${REPEATS:-1}; TIMED_STEPS=${TIMED_STEPS:-2}; WARMUP_STEPS=${WARMUP_STEPS:-1}
  EXTRA_REPEATS=${EXTRA_REPEATS:-0}
  DDPM_STEPS=3; DDIM_STEPS=3; DPM_STEPS=3
else
  MARKDOWN=${MARKDOWN:-docs/BENCHMARKS.md}
  DDPM_STEPS=400; DDIM_STEPS=50; DPM_STEPS=20
fi
REPEATS=${REPEATS:-3}
TIMED_STEPS=${TIMED_STEPS:-30}
WARMUP_STEPS=${WARMUP_STEPS:-5}
MAX_WAIT_IDLE_S=${MAX_WAIT_IDLE_S:-0}
OUT=${OUT:-/tmp/tfdiffusion-bench-${STAMP}.jsonl}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

COMMON=(--markdown="$MARKDOWN" --repeats="$REPEATS" --max_wait_idle_s="$MAX_WAIT_IDLE_S")
TRAIN=(benchmarks/train_throughput.py --batch_size=64 --warmup_steps="$WARMUP_STEPS" --timed_steps="$TIMED_STEPS"
       --extra_repeats="${EXTRA_REPEATS:-2}")
SAMPLE=(benchmarks/sampling.py --batch_size=16 --extra_repeats="${EXTRA_REPEATS:-1}")

failures=0
run() {
  echo "[$(date -u +%H:%M:%S)] python $* ${COMMON[*]}" >&2
  if [[ "${DRY_RUN:-0}" == 1 ]]; then return 0; fi
  python "$@" "${COMMON[@]}" 2>>"${OUT%.jsonl}.log" | tee -a "$OUT" | grep --line-buffered '"event": "summary"' \
    | python -c 'import json,sys
for line in sys.stdin:
    r = json.loads(line)
    keys = ("network","precision","jit_compile","images_per_s","compile_s","peak_rss_mb","sampler","num_steps",
            "inprocess_s","served_s","eager_s","served_over_inprocess","other_cpu_fraction","contended")
    print("   ", {k: (round(r[k], 3) if isinstance(r[k], float) else r[k]) for k in keys if k in r}, flush=True)'
  local status=${PIPESTATUS[0]}
  if [[ $status -ne 0 ]]; then
    echo "    FAILED (exit $status); see ${OUT%.jsonl}.log" >&2
    failures=$((failures + 1))
  fi
}

echo "JSON lines: $OUT   stderr: ${OUT%.jsonl}.log   results: $MARKDOWN" >&2
# Whether bf16 can pay here (AMX) decides what the bf16 rows mean; every summary record has the
# flags and tfdiffusion's "auto" decision too.
python -c 'from tfdiffusion import precision; flags = precision.cpu_flags()
print("CPU bf16 units:", ", ".join(f"{f} {f in flags}" for f in ("amx_bf16", "amx_tile", "avx512_bf16")))' >&2
SECONDS=0
# Training throughput: fp32 graph mode (the default on CPU), XLA, mixed_bfloat16.
run "${TRAIN[@]}" --network=seed_unet        --precision=float32        --jit_compile=0
run "${TRAIN[@]}" --network=plain_keras_port --precision=float32        --jit_compile=0
if [[ "${XLA:-1}" == 1 ]]; then
  run "${TRAIN[@]}" --network=seed_unet        --precision=float32        --jit_compile=1
  run "${TRAIN[@]}" --network=plain_keras_port --precision=float32        --jit_compile=1
fi
run "${TRAIN[@]}" --network=seed_unet        --precision=mixed_bfloat16 --jit_compile=0
run "${TRAIN[@]}" --network=plain_keras_port --precision=mixed_bfloat16 --jit_compile=0
# The PyTorch port (needs `pip install torch`; skipped without it): fp32 and bf16 autocast, eager and compiled.
if python -c "import torch" 2>/dev/null; then
  TORCH=(benchmarks/peers_torch.py --batch_size=64 --warmup_steps="$WARMUP_STEPS" --timed_steps="$TIMED_STEPS"
         --extra_repeats="${EXTRA_REPEATS:-2}")
  run "${TORCH[@]}" --precision=float32       --compile=0
  run "${TORCH[@]}" --precision=bf16_autocast --compile=0
  if [[ "${TORCH_COMPILE:-1}" == 1 ]]; then
    run "${TORCH[@]}" --precision=float32       --compile=1
    run "${TORCH[@]}" --precision=bf16_autocast --compile=1
  fi
else
  echo "PyTorch not installed: the PyTorch peer rows are skipped" >&2
fi
# The configs' other networks (README's network table), fp32 graph mode; CIFAR-10's UNet takes seconds a step.
run "${TRAIN[@]}" --config=configs/fashion_mnist.py --precision=float32 --jit_compile=0
run "${TRAIN[@]}" --config=configs/mnist_dit.py     --precision=float32 --jit_compile=0
run "${TRAIN[@]}" --config=configs/cifar10.py       --precision=float32 --jit_compile=0 --timed_steps=4 --warmup_steps=1 --extra_repeats=0
# Sampling, 16 images: in-process generate, the exported signature, the eager Python loop.
declare -A SAMPLER_STEPS=([ddpm]=$DDPM_STEPS [ddim]=$DDIM_STEPS [dpmpp_2m]=$DPM_STEPS)
for sampler in ${SAMPLERS:-ddpm ddim dpmpp_2m}; do
  run "${SAMPLE[@]}" --sampler="$sampler" --num_steps="${SAMPLER_STEPS[$sampler]}"
done
# The same under bfloat16 compute (`DiffusionModel.with_dtype_policy`), against the float32 rows above.
for sampler in ${BF16_SAMPLERS-dpmpp_2m}; do
  run "${SAMPLE[@]}" --sampler="$sampler" --num_steps="${SAMPLER_STEPS[$sampler]}" --precision=mixed_bfloat16
done

if [[ "${DRY_RUN:-0}" != 1 ]]; then
  echo "[$(date -u +%H:%M:%S)] summary of this run (${SECONDS} s):" >&2
  python benchmarks/summarize_run.py --jsonl="$OUT" --markdown="$MARKDOWN" \
    --command="MARKDOWN=$MARKDOWN REPEATS=$REPEATS TIMED_STEPS=$TIMED_STEPS WARMUP_STEPS=$WARMUP_STEPS XLA=${XLA:-1} TORCH_COMPILE=${TORCH_COMPILE:-1} SAMPLERS='${SAMPLERS:-ddpm ddim dpmpp_2m}' BF16_SAMPLERS='${BF16_SAMPLERS-dpmpp_2m}' bash benchmarks/run_all.sh" \
    >>"$OUT" || failures=$((failures + 1))
fi
[[ $failures -eq 0 ]] || { echo "$failures benchmark(s) failed" >&2; exit 1; }
