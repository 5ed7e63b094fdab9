# How loop-unrolling-ab-*.txt were made: `bash loop-unrolling-ab.sh 32` and `... 128`, fresh
# processes alternating `off` (no flag) and `on` (XLA_FLAGS=--xla_backend_extra_options=
# xla_cpu_disable_loop_unrolling); columns: cold compile s, cached s, train images/s. In the
# recorded run the CLI set that flag itself unless MNV2_XLA_DEFAULTS=0; this script sets the
# same XLA_FLAGS value directly. jemalloc is preloaded for JAX as `mnv2` does (the recorded run
# sourced these settings from a file outside the repository):
export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 MNV2_ALLOCATOR=system \
  MALLOC_CONF=thp:always,metadata_thp:auto,oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1
for i in 1 2 3 4 5 6; do
  for v in off on; do
    if [ $v = off ]; then unset XLA_FLAGS; else export XLA_FLAGS=--xla_backend_extra_options=xla_cpu_disable_loop_unrolling; fi
    r=$(python -m mnv2_jax bench --width 1.0 --resolution 224 --batch-size $1 --modes train --repeats 3 --steps 1 --json 2>/dev/null | tail -1)
    echo "$v $(echo "$r" | python -c 'import json,sys; d=json.loads(sys.stdin.read()); print(round(d["compile_seconds"],2), round(d["compile_seconds_cached"],2), round(d["train_images_per_sec"],1))')"
  done
done
