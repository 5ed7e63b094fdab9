"""Finished runs as Python objects: `load_run` for notebooks and export, `evaluate_workdir`
for `mnv2 eval`. Reads run folders (`mnv2_jax.workdir`) and imported-weights folders."""

from __future__ import annotations

from typing import Any

import ml_collections

from mnv2_jax import workdir as workdir_lib


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run (or a weights import) wrote to `workdir/config.json`."""
    stored = workdir_lib.read_config(workdir)
    if stored is None:
        raise ValueError(f"{workdir}: not a run directory (no {workdir_lib.CONFIG})")
    stored.pop("provenance", None)
    stored.setdefault("task", "classification")
    return ml_collections.ConfigDict(_tuples(stored))


def _tuples(d: dict) -> dict:
    """JSON turns tuples into lists; the config's tuple-valued keys want them back."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out[key] = _tuples(value)
        elif isinstance(value, list):
            out[key] = tuple(value)
        else:
            out[key] = value
    return out


def load_run(workdir: str, ema: bool = True, step: int | None = None) -> tuple[Any, dict, Any]:
    """`(module, variables, config)` of a run: the latest checkpoint (or `step`), the averaged
    (EMA) weights unless `ema=False`. Also reads an imported-weights folder (`mnv2 import-keras`).

    The module is built for inference on any backend; `variables` is
    `{'params': ..., 'batch_stats': ...}`.
    """
    import jax

    from mnv2_jax import tasks
    from mnv2_jax.train import checkpoint, optim, state

    config = read_config(workdir)
    task = tasks.get_task(config)
    module = task.model(config.num_classes)
    if checkpoint.has_variables_file(workdir):
        return module, checkpoint.load_variables(workdir), config
    tx = optim.create_optimizer(config, steps_per_epoch=1)
    abstract = jax.eval_shape(
        lambda: state.create_train_state(module, tx, config.resolution, 0, task.train_metrics)
    )
    checkpointer = checkpoint.Checkpointer(workdir)
    try:
        restored = checkpointer.restore(abstract, step)
    finally:
        checkpointer.close()
    if restored is None:
        raise ValueError(f"{workdir}: no checkpoint to load")
    return module, state.eval_variables(restored, ema=ema), config


def evaluate_workdir(workdir: str, step: int | None = None) -> dict:
    """`mnv2 eval`: a run's checkpoint (raw and averaged weights) on its eval split."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from mnv2_jax import tasks
    from mnv2_jax.train import checkpoint, loop

    loop.enable_compilation_cache()
    config = read_config(workdir)
    task = tasks.get_task(config)
    mesh = loop.data_mesh()
    replicated, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    out: dict[str, Any] = {"workdir": workdir, "dataset": config.dataset}
    if checkpoint.has_variables_file(workdir):
        module, variables, _ = load_run(workdir)
        eval_step = loop.make_eval_step(task, module, replicated, batch_sharding)
        result = loop.evaluate(
            task, eval_step, jax.device_put(variables, replicated), batch_sharding, show=True
        )
        return {**out, **{f"eval/{k}": v for k, v in result.items()}}
    for prefix, ema in (("eval", False), ("eval_ema", True)):
        module, variables, _ = load_run(workdir, ema=ema, step=step)
        eval_step = loop.make_eval_step(task, module, replicated, batch_sharding)
        result = loop.evaluate(
            task, eval_step, jax.device_put(variables, replicated), batch_sharding, show=True
        )
        out.update({f"{prefix}/{k}": v for k, v in result.items()})
    if step is not None:
        out["step"] = step
    else:
        checkpointer = checkpoint.Checkpointer(workdir)
        out["step"] = checkpointer.latest_step()
        checkpointer.close()
    return out
