# How step-cache-ab-*.txt were made (session 9): `bash step-cache-ab.sh 32` and `... 128`.
# old = `git worktree add /tmp/p9/old 7f9e0ad` (session 8's export_cache), put first on PYTHONPATH;
# new = the installed checkout. /tmp/p7/env.sh preloads jemalloc for JAX:
#   LD_PRELOAD=.../libjemalloc.so.2 MALLOC_CONF=thp:always,metadata_thp:auto,oversize_threshold:0,
#   dirty_decay_ms:-1,muzzy_decay_ms:-1 MNV2_ALLOCATOR=system
source /tmp/p7/env.sh
for i in 1 2 3 4 5; do
  for v in old new; do
    if [ $v = old ]; then export PYTHONPATH=/tmp/p9/old; else unset PYTHONPATH; fi
    r=$(cd /tmp/p9 && python -m mnv2_jax bench --width 1.0 --resolution 224 --batch-size $1 --modes train --repeats 1 --steps 1 --json 2>/dev/null | tail -1)
    echo "$v $(echo "$r" | python -c 'import json,sys; d=json.loads(sys.stdin.read()); print(round(d["compile_seconds"],2), round(d["compile_seconds_cached"],2))')"
  done
done
