# Session 10, dropped: LLVM loop unrolling off for XLA's CPU compiler. How loop-unrolling-ab-*.txt
# were made: `bash loop-unrolling-ab.sh 32` and `... 128`, alternating fresh processes, columns
# cold compile s, cached s, train images/s. Then the flag came from a module since removed that
# the CLI applied unless MNV2_XLA_DEFAULTS=0; this script sets XLA_FLAGS directly to the same value.
# /tmp/p7/env.sh preloads jemalloc for JAX (see ../cpu-2026-11-28-session9/step-cache-ab.sh).
source /tmp/p7/env.sh
for i in 1 2 3 4 5 6; do
  for v in off on; do
    if [ $v = off ]; then unset XLA_FLAGS; else export XLA_FLAGS=--xla_backend_extra_options=xla_cpu_disable_loop_unrolling; fi
    r=$(python -m mnv2_jax bench --width 1.0 --resolution 224 --batch-size $1 --modes train --repeats 3 --steps 1 --json 2>/dev/null | tail -1)
    echo "$v $(echo "$r" | python -c 'import json,sys; d=json.loads(sys.stdin.read()); print(round(d["compile_seconds"],2), round(d["compile_seconds_cached"],2), round(d["train_images_per_sec"],1))')"
  done
done
