#!/usr/bin/env bash
# GPU side by side, one setting: our bf16 train step and inference against
# PyTorch at its best on the same card (channels-last + bf16 autocast, eager
# and torch.compile). Each run is its own process with its own time limit and
# appends its JSON result as one line of $OUT/results.jsonl (its stderr goes to
# $OUT/runs.log), so a slow or failing run loses only itself, and the whole
# output is four files; benchmarks/gpu_table.py prints the table from them.
#
#   OUT=gpu_out BATCHES="512 1024" bash benchmarks/gpu.sh
#
# Settings (environment): WIDTH (1.0), RESOLUTION (224), BATCHES ("512 1024"),
# PYTHON (python3), REPEATS (3), EXTRA ("shifted": also time our shifted
# depthwise at the first batch size; "" to skip), and each run's time limit in
# seconds: JAX_LIMIT (240), EAGER_LIMIT (90), COMPILE_LIMIT (200). Our cold
# train-step compile on one H200 took 77 s at batch 512 and over 240 s at
# batch 2048, so a large batch needs a JAX_LIMIT of several minutes.
set -u
OUT=${OUT:-/tmp/mnv2_gpu}
PY=${PYTHON:-python3}
W=${WIDTH:-1.0}
R=${RESOLUTION:-224}
BATCHES=${BATCHES:-"512 1024"}
REPEATS=${REPEATS:-3}
EXTRA=${EXTRA-shifted}
JAX_LIMIT=${JAX_LIMIT:-240}
EAGER_LIMIT=${EAGER_LIMIT:-90}
COMPILE_LIMIT=${COMPILE_LIMIT:-200}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MNV2_ALLOCATOR=system

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
$PY -c 'import jax, flax, optax, torch; print("jax", jax.__version__, jax.devices(), "flax", flax.__version__, "optax", optax.__version__, "torch", torch.__version__)' 2>&1 | tee -a "$OUT/gpu.txt"

TMP=$(mktemp -d)
run() {  # run NAME SECONDS COMMAND...: its JSON line to results.jsonl as {"run": NAME, ...}
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date +%T), limit ${limit}s)" | tee -a "$OUT/runs.log"
  timeout "$limit" "$@" >"$TMP/out" 2>"$TMP/err"
  local rc=$?
  cat "$TMP/err" >>"$OUT/runs.log"
  if [ $rc -eq 0 ]; then
    tail -n 1 "$TMP/out" | sed "s/^{/{\"run\": \"$name\", /" >>"$OUT/results.jsonl"
  else
    echo "   exit $rc:"
    tail -n 5 "$TMP/err"
  fi
}

JAX=("$PY" -m mnv2_jax bench --width "$W" --resolution "$R" --dtype bfloat16 --repeats "$REPEATS" --json)
TORCH=("$PY" benchmarks/torch_mnv2.py --width "$W" --resolution "$R" --device "${TORCH_DEVICE:-cuda}"
  --ema 0.9999 --steps 20 --repeats "$REPEATS" --json)

first=1
for b in $BATCHES; do
  run "jax_b$b" "$JAX_LIMIT" "${JAX[@]}" --batch-size "$b"
  [ $first -eq 1 ] && run "torch_eager_b$b" "$EAGER_LIMIT" "${TORCH[@]}" --batch-size "$b"
  run "torch_compile_b$b" "$COMPILE_LIMIT" "${TORCH[@]}" --batch-size "$b" --compile
  if [ $first -eq 1 ] && [ "$EXTRA" = shifted ]; then
    run "jax_shifted_b$b" "$JAX_LIMIT" "${JAX[@]}" --batch-size "$b" --depthwise-impl shifted
  fi
  first=0
done
$PY benchmarks/gpu_table.py "$OUT" | tee "$OUT/table.txt"
