"""The train step: forward, the task's loss, backward, optimizer, batch-norm update, weight average.

A pure function of (state, batch), the same for every task; the loop in `mnv2_jax.train.loop` jits them over
a device mesh. Data parallelism is SPMD: the batch is sharded along the mesh's
'data' axis, the state is replicated, and XLA inserts the gradient all-reduce.
Batch norm over the global batch needs nothing more (the mean over a sharded
axis is a cross-device mean). Batch norm per group of `bn_group_size`
examples (the paper's 16 workers each normalised their own 96) vmaps the
model over groups, so each group sees only its own statistics -- on one
device or many alike; the groups' running statistics are averaged in the
step, so evaluation and checkpoints always see one set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mnv2_jax.train import optim
from mnv2_jax.train.state import TrainState

PyTree = Any


def init_compiler_options(backend: str | None = None) -> dict[str, Any]:
    """XLA options for compiling `create_train_state`: on CPU, LLVM at optimisation
    level 1 instead of 3; elsewhere none.

    Compiling the initial state is mostly LLVM optimising the random-number
    kernels (threefry and the inverse error function, one per parameter shape),
    for a program that runs once. At level 1 the same values come out bit for
    bit (`tests/test_steps.py` checks it) and the compile takes about half as
    long; level 0 changes the values.
    """
    if (backend or jax.default_backend()) != "cpu":
        return {}
    return {"xla_backend_optimization_level": 1}


def global_norm(tree: PyTree) -> jax.Array:
    """The L2 norm of all leaves together (`optax.tree.norm`), as one float32
    reduction over their concatenation.

    Per leaf, XLA compiles a square and a reduction for every distinct leaf
    shape; over the raveled leaves the train step has fewer kernels and
    compiles faster, at the same step time.
    """
    leaves = [jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)]
    return jnp.sqrt(jnp.sum(jnp.square(jnp.concatenate(leaves))))


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    *,
    loss_fn: Callable[[jax.Array, dict], tuple[jax.Array, dict[str, jax.Array]]],
    ema_decay: float,
    bn_groups: int = 1,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`train_step(state, batch) -> (state, metrics)`.

    `loss_fn(outputs, batch) -> (loss, metrics)` is the task's loss (`Task.loss`): the model's
    outputs for the batch in, the mean loss and a dict of per-batch metric means out.
    A non-finite loss or gradient leaves the state unchanged and reports `finite=False`, so the
    loop can stop with the last good state intact.
    """

    def forward(params, batch_stats, images, rng):
        outputs, updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        return outputs, updates["batch_stats"]

    def objective(params, state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        images = batch["image"]
        if bn_groups == 1:
            outputs, batch_stats = forward(params, state.batch_stats, images, rng)
        else:
            grouped = images.reshape(bn_groups, -1, *images.shape[1:])
            rngs = jax.random.split(rng, bn_groups)
            outputs, batch_stats = jax.vmap(forward, in_axes=(None, None, 0, 0))(
                params, state.batch_stats, grouped, rngs
            )
            outputs = jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:]), outputs)
            batch_stats = jax.tree.map(lambda s: jnp.mean(s, axis=0), batch_stats)
        loss, metrics = loss_fn(outputs, batch)
        return loss, (metrics, batch_stats)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        (loss, (metrics, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params, state, batch
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if ema_decay:
            # Per array, like the optimizer (see `optim.create_optimizer`): arrays of
            # one shape share a kernel, which raveled slices would not.
            ema_params, ema_batch_stats = optim.ema_update(
                (state.ema_params, state.ema_batch_stats), (params, batch_stats), state.step, ema_decay
            )
        else:
            ema_params, ema_batch_stats = params, batch_stats
        batch_values = {"loss": loss, **metrics, "steps": 1.0}
        new_state = state.replace(
            metric_sums={k: state.metric_sums[k] + batch_values[k] for k in state.metric_sums},
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            ema_params=ema_params,
            ema_batch_stats=ema_batch_stats,
        )
        # One norm serves both the log and the check; a norm that overflows float32
        # (gradients beyond ~1e19) counts as non-finite, which it is in practice.
        grad_norm = global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # Keep the last good state: a NaN step changes nothing but the report.
        new_state = jax.lax.cond(finite, lambda: new_state, lambda: state)
        return new_state, {
            "loss": loss,
            **metrics,
            "grad_norm": grad_norm,
            # The new optimizer state holds the hyperparameters this update used (the old one: the
            # previous update's), so that the logged lr at step k is the one that produced step k.
            "lr": optim.current_learning_rate(opt_state),
            "finite": finite,
        }

    return train_step
