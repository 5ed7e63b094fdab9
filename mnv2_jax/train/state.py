"""The train state: parameters, batch-norm statistics, optimizer state, weight average, RNG,
and the running sums of the train metrics (so that a resumed run logs the same averages)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    ema_params: PyTree
    ema_batch_stats: PyTree
    rng: jax.Array
    # Sums since the last log line: 'loss', each of the task's train metrics, and 'steps'.
    metric_sums: dict[str, jax.Array]


def zero_metric_sums(metric_names: Sequence[str]) -> dict[str, jax.Array]:
    return {name: jnp.zeros((), jnp.float32) for name in ("loss", *metric_names, "steps")}


def create_train_state(
    model,
    tx: optax.GradientTransformation,
    resolution: int,
    seed: int,
    metric_names: Sequence[str] = ("top1",),
) -> TrainState:
    """Initial state; the EMA starts equal to the initial weights (as TF's)."""
    rng = jax.random.PRNGKey(seed)
    init_rng, dropout_rng = jax.random.split(rng)
    x = jnp.zeros((1, resolution, resolution, 3), jnp.float32)
    variables = model.init(init_rng, x, train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        ema_params=params,
        ema_batch_stats=batch_stats,
        rng=dropout_rng,
        metric_sums=zero_metric_sums(metric_names),
    )


def reset_metric_sums(state: TrainState) -> TrainState:
    return state.replace(metric_sums=jax.tree.map(jnp.zeros_like, state.metric_sums))


def eval_variables(state: TrainState, ema: bool) -> dict:
    if ema:
        return {"params": state.ema_params, "batch_stats": state.ema_batch_stats}
    return {"params": state.params, "batch_stats": state.batch_stats}
