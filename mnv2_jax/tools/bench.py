"""Throughput and compile-time benchmark of the real train step and inference.

The train step is `mnv2 train`'s own (`mnv2_jax.train.step.make_train_step`):
forward, backward, L2 weight decay, RMSProp with momentum (the slim recipe),
batch-norm statistics update and the weight average. Inference is the eval
forward pass (running statistics), `steps.predict`: a big batch in chunks
on one CPU device (`steps.infer_chunk`). Images/s is the median over repeats after
a warm-up. Compile seconds: cold is trace, lower and compile into empty caches;
cached is what a second process pays with a warm persistent compilation cache (it traces
and lowers the step, and loads the executable instead of compiling it).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import numpy as np

# The libraries a benchmark result depends on, recorded in every result (`library_versions`).
VERSIONED = ("jax", "jaxlib", "flax", "optax")


def library_versions(names: Sequence[str] = VERSIONED) -> dict[str, str]:
    """`{name: installed version}` of `names` (those installed), for a benchmark's JSON: a number
    measured with one jax/jaxlib is not comparable with one measured with another."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _time_steps(fn: Callable[[], object], steps: int, repeats: int) -> list[float]:
    import jax

    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = None
        for _ in range(steps):
            out = fn()
        jax.block_until_ready(out)
        seconds.append(time.perf_counter() - start)
    return seconds


def _steps_for(seconds_per_step: float, target_seconds: float = 2.0) -> int:
    return max(1, min(50, int(target_seconds / max(seconds_per_step, 1e-6))))


def _compile_twice(jitted: Any, args: tuple) -> tuple[float, float, Any]:
    """Trace, lower and compile `jitted` into a fresh persistent compilation cache (cold), then
    again after dropping every in-memory cache: the second is what a new process with a warm
    cache pays, as a rerun of `mnv2 train` does."""
    import tempfile

    import jax
    from jax.experimental.compilation_cache import compilation_cache

    previous = jax.config.jax_compilation_cache_dir
    with tempfile.TemporaryDirectory(prefix="mnv2_bench_cache_") as cache:
        # JAX binds its persistent cache to a directory once; reset so that each
        # phase uses the directory configured for it.
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        compilation_cache.reset_cache()
        try:
            start = time.perf_counter()
            jitted.lower(*args).compile()
            cold = time.perf_counter() - start
            jax.clear_caches()
            compilation_cache.reset_cache()
            start = time.perf_counter()
            compiled = jitted.lower(*args).compile()
            cached = time.perf_counter() - start
        finally:
            jax.config.update("jax_compilation_cache_dir", previous)
            compilation_cache.reset_cache()
    return cold, cached, compiled


def peak_memory_bytes() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def benchmark(
    width: float = 1.0,
    resolution: int = 224,
    batch_size: int = 32,
    *,
    expansion: float | tuple[float, ...] = 6.0,
    bottleneck_activation: str = "linear",
    residual: str = "bottleneck",
    num_classes: int = 1000,
    dtype: str = "float32",
    steps: int | None = None,
    repeats: int = 5,
    depthwise_impl: str = "auto",
    pointwise_impl: str = "auto",
    modes: tuple[str, ...] = ("train", "infer"),
    infer_chunk: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Measure one setting; returns the `mnv2 bench --json` dictionary."""
    import jax
    import jax.numpy as jnp

    from mnv2_jax import allocator, tasks
    from mnv2_jax import config as config_lib
    from mnv2_jax.models import inference
    from mnv2_jax.train import optim
    from mnv2_jax.train import state as state_lib
    from mnv2_jax.train import step as steps_lib

    log = log or (lambda _: None)
    config = config_lib.apply_overrides(
        config_lib.base_config(),
        dict(
            width=width,
            resolution=resolution,
            expansion=expansion,
            bottleneck_activation=bottleneck_activation,
            residual=residual,
            batch_size=batch_size,
            dtype=dtype,
            depthwise_impl=depthwise_impl,
            pointwise_impl=pointwise_impl,
        ),
    )
    config_lib.validate_config(config)
    config.optim.update(optim.resolve_optim(config))
    task = tasks.get_task(config)
    model = task.model(num_classes)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.uniform(-1, 1, (batch_size, resolution, resolution, 3)).astype(np.float32)),
        "label": jnp.asarray(rng.integers(0, max(num_classes, 1), batch_size).astype(np.int32)),
    }
    result: dict = {
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "versions": library_versions(),
        "width": width,
        "resolution": resolution,
        "batch_size": batch_size,
        "dtype": dtype,
        "depthwise_impl": depthwise_impl,
        "pointwise_impl": pointwise_impl,
        "allocator": allocator.describe(),
    }
    if "train" in modes:
        opt = optim.resolve_optim(config)
        tx = optim.create_optimizer(config, steps_per_epoch=1000)
        state = jax.jit(
            lambda: state_lib.create_train_state(model, tx, resolution, 0, task.train_metrics),
            compiler_options=steps_lib.init_compiler_options(),
        )()
        step_fn = steps_lib.make_train_step(model, tx, loss_fn=task.loss, ema_decay=opt["ema_decay"])
        result["compile_seconds"], result["compile_seconds_cached"], compiled = _compile_twice(
            jax.jit(step_fn, donate_argnums=(0,)), (state, batch)
        )
        log(
            f"train step compiled in {result['compile_seconds']:.1f} s cold, "
            f"{result['compile_seconds_cached']:.1f} s from the persistent compilation cache"
        )
        holder = {"state": state}

        def train_once():
            holder["state"], metrics = compiled(holder["state"], batch)
            return metrics["loss"]

        first = min(_time_steps(train_once, 1, 3))  # warm-up
        n = steps or _steps_for(first)
        seconds = _time_steps(train_once, n, repeats)
        result["train_images_per_sec"] = batch_size * n / statistics.median(seconds)
        result["train_steps_per_repeat"] = n
        log(f"train: {result['train_images_per_sec']:.1f} images/s ({n} steps x {repeats} repeats)")
        variables = state_lib.eval_variables(holder["state"], ema=False)
    else:
        variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), batch["image"][:1]))()
    if "infer" in modes:
        infer = jax.jit(lambda v, x: inference.predict(model, v, x, infer_chunk))
        start = time.perf_counter()
        compiled_infer = infer.lower(variables, batch["image"]).compile()
        result["infer_compile_seconds"] = time.perf_counter() - start
        result["infer_chunk"] = infer_chunk or inference.infer_chunk(
            batch_size, (resolution, resolution), width
        )
        first = min(_time_steps(lambda: compiled_infer(variables, batch["image"]), 1, 3))
        n = steps or _steps_for(first)
        seconds = _time_steps(lambda: compiled_infer(variables, batch["image"]), n, repeats)
        result["infer_images_per_sec"] = batch_size * n / statistics.median(seconds)
        log(f"inference: {result['infer_images_per_sec']:.1f} images/s ({n} steps x {repeats} repeats)")
    result["peak_memory_bytes"] = peak_memory_bytes()
    return result


def benchmark_input(resolution: int = 224, batch_size: int = 32, num_batches: int = 20) -> dict:
    """Images/s of the ImageNet-style train input pipeline alone (decode, crop, resize)."""
    from mnv2_jax.data import input_pipeline as data

    rate = data.input_benchmark_synthetic(
        resolution=resolution, batch_size=batch_size, num_batches=num_batches
    )
    return {
        "input_images_per_sec": rate,
        "resolution": resolution,
        "batch_size": batch_size,
        "versions": library_versions(
            ("tensorflow", "tensorflow-cpu", "tensorflow-datasets", "jax", "jaxlib")
        ),
    }


def format_result(result: dict) -> str:
    lines = []
    for key, value in result.items():
        if isinstance(value, float):
            value = f"{value:,.2f}"
        elif isinstance(value, int) and key.endswith("bytes"):
            value = f"{value:,} ({value / 2**20:.1f} MiB)"
        lines.append(f"{key:>24}: {value}")
    return "\n".join(lines)
