"""Time `Lowered.compile()` of the train step, with and without
`XLA_FLAGS=--xla_backend_extra_options=xla_cpu_disable_loop_unrolling`, in alternating processes:

    JAX_ENABLE_COMPILATION_CACHE=false python loop-unrolling-compile-only.py 1.0 224 32

Prints trace + lower seconds, compile wall seconds, process CPU seconds and the fusion count.
loop-unrolling-compile-only.txt is its output, 4 rounds at batch 32 and 128 ("default" = no flag).
"""

import sys
import time

import jax
import jax.numpy as jnp

from mnv2_jax import config as config_lib
from mnv2_jax.train import optim
from mnv2_jax.train import step as steps_lib

width, res, bs = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
config = config_lib.apply_overrides(
    config_lib.base_config(), dict(width=width, resolution=res, batch_size=bs)
)
model = config_lib.model_from_config(config, 1000)
opt = optim.resolve_optim(config)
tx = optim.create_optimizer(config, steps_per_epoch=1000)
state = jax.eval_shape(lambda: steps_lib.create_train_state(model, tx, res, 0))
batch = {
    "image": jax.ShapeDtypeStruct((bs, res, res, 3), jnp.float32),
    "label": jax.ShapeDtypeStruct((bs,), jnp.int32),
}
fn = steps_lib.make_train_step(model, tx, label_smoothing=opt["label_smoothing"], ema_decay=opt["ema_decay"])
t0 = time.perf_counter()
lowered = jax.jit(fn, donate_argnums=(0,)).lower(state, batch)
t1, p1 = time.perf_counter(), time.process_time()
compiled = lowered.compile()
t2, p2 = time.perf_counter(), time.process_time()
fusions = compiled.as_text().count("fusion(")
print(f"lower {t1 - t0:.1f} s  compile {t2 - t1:.2f} s cpu {p2 - p1:.2f} kernels {fusions}")
