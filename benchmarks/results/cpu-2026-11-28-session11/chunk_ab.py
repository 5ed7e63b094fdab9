import time, statistics, sys
import jax, jax.numpy as jnp, numpy as np
from mnv2_jax import steps, model as M
w, r, b = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]); chunks = [int(c) for c in sys.argv[4].split(",")]
m = M.create_model(width=w)
v = M.init_variables(m, r)
x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (b, r, r, 3)).astype(np.float32))
fns = {c: jax.jit(lambda v, x, c=c: steps.predict(m, v, x, c)).lower(v, x).compile() for c in chunks}
res = {c: [] for c in chunks}
for it in range(12):
    for c in (chunks if it % 2 == 0 else chunks[::-1]):
        f = fns[c]; jax.block_until_ready(f(v, x))
        t = time.perf_counter()
        for _ in range(8): out = f(v, x)
        jax.block_until_ready(out); res[c].append(8 * b / (time.perf_counter() - t))
for c in chunks: print(c, round(statistics.median(res[c]), 1), [round(v) for v in res[c]])
