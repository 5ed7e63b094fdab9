"""The compiled pieces of training: train state, train step, eval step.

Pure functions of (state, batch); the loop in `mnv2_jax.train.loop` jits them over
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

import flax
import jax
import jax.numpy as jnp
import optax

from mnv2_jax.train import optim

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
    # Running sums of the train metrics since the last log line (loss, top1,
    # steps): part of the state so that a resumed run logs the same averages.
    metric_sums: jax.Array


def create_train_state(model, tx: optax.GradientTransformation, resolution: int, seed: int) -> TrainState:
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
        metric_sums=jnp.zeros((3,), jnp.float32),
    )


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross entropy with label smoothing, in float32."""
    num_classes = logits.shape[-1]
    targets = (
        optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
        if label_smoothing
        else (jax.nn.one_hot(labels, num_classes))
    )
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


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
    label_smoothing: float,
    ema_decay: float,
    bn_groups: int = 1,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """`train_step(state, batch) -> (state, metrics)`.

    A non-finite loss or gradient leaves the state unchanged and reports
    `finite=False`, so the loop can stop with the last good state intact.
    """

    def forward(params, batch_stats, images, rng):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        return logits, updates["batch_stats"]

    def loss_fn(params, state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        images = batch["image"]
        if bn_groups == 1:
            logits, batch_stats = forward(params, state.batch_stats, images, rng)
        else:
            grouped = images.reshape(bn_groups, -1, *images.shape[1:])
            rngs = jax.random.split(rng, bn_groups)
            logits, batch_stats = jax.vmap(forward, in_axes=(None, None, 0, 0))(
                params, state.batch_stats, grouped, rngs
            )
            logits = logits.reshape(-1, logits.shape[-1])
            batch_stats = jax.tree.map(lambda s: jnp.mean(s, axis=0), batch_stats)
        loss = jnp.mean(cross_entropy(logits, batch["label"], label_smoothing))
        return loss, (logits, batch_stats)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
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
        top1 = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        new_state = state.replace(
            metric_sums=state.metric_sums + jnp.stack([loss, top1, 1.0]),
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
        metrics = {
            "loss": loss,
            "top1": top1,
            "grad_norm": grad_norm,
            # The new optimizer state holds the hyperparameters this update used (the old one: the
            # previous update's), so that the logged lr at step k is the one that produced step k.
            "lr": optim.current_learning_rate(opt_state),
            "finite": finite,
        }
        return new_state, metrics

    return train_step


def reset_metric_sums(state: TrainState) -> TrainState:
    return state.replace(metric_sums=jnp.zeros_like(state.metric_sums))


# On one CPU device, inference runs a big batch in chunks, one after another in
# an XLA loop (`jax.lax.map`), each chunk through the whole network: the loop
# body's buffers are reused from chunk to chunk and stay in cache, where the
# whole batch at once streams every activation through memory. Inference only:
# batch norm uses its running statistics, so every image is independent. A chunk
# holds at least INFER_CHUNK_SIZE activation units (images x pixels x width
# multiplier; 8 images at 1.0/224). Smaller chunks are slower than the whole
# batch on CPU, so below the threshold the batch runs whole.
INFER_CHUNK_SIZE = 8 * 224 * 224


def infer_chunk(
    batch_size: int,
    image_shape: tuple[int, int] = (224, 224),
    width: float = 1.0,
    backend: str | None = None,
    device_count: int | None = None,
) -> int:
    """Images per chunk for `predict`: on a single CPU device the smallest divisor
    of the batch whose chunk reaches INFER_CHUNK_SIZE; elsewhere (GPU, TPU,
    several devices) the whole batch, since there a big batch keeps the chip busy."""
    backend = backend or jax.default_backend()
    device_count = jax.device_count() if device_count is None else device_count
    if backend != "cpu" or device_count != 1:
        return batch_size
    per_image = image_shape[0] * image_shape[1] * width
    reaching = [
        d for d in range(1, batch_size + 1) if batch_size % d == 0 and d * per_image >= INFER_CHUNK_SIZE
    ]
    return min(reaching, default=batch_size)


def predict(model, variables: dict, images: jax.Array, chunk: int | None = None) -> jax.Array:
    """Inference logits (`model.apply(variables, images, train=False)`), computed in
    chunks of `chunk` images (None: `infer_chunk`), which must divide the batch."""
    batch = images.shape[0]
    if chunk is None:
        arch = getattr(model, "arch", None)
        chunk = infer_chunk(batch, images.shape[1:3], arch.width if arch is not None else 1.0)
    if chunk >= batch:
        return model.apply(variables, images, train=False)
    if chunk < 1 or batch % chunk:
        raise ValueError(f"chunk: must be a positive divisor of the batch size {batch}, got {chunk}")
    chunks = images.reshape(batch // chunk, chunk, *images.shape[1:])
    logits = jax.lax.map(lambda x: model.apply(variables, x, train=False), chunks)
    return logits.reshape(batch, *logits.shape[2:])


def make_eval_step(model) -> Callable[[dict, dict], dict]:
    """`eval_step(variables, batch) -> sums` over the real (mask == 1) examples."""

    def eval_step(variables: dict, batch: dict) -> dict:
        logits = predict(model, variables, batch["image"])
        mask = batch.get("mask", jnp.ones(logits.shape[:1], jnp.float32))
        labels = batch["label"]
        top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        return {
            "loss": jnp.sum(cross_entropy(logits, labels) * mask),
            "top1": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
            "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * mask),
            "count": jnp.sum(mask),
        }

    return eval_step


def eval_variables(state: TrainState, ema: bool) -> dict:
    if ema:
        return {"params": state.ema_params, "batch_stats": state.ema_batch_stats}
    return {"params": state.params, "batch_stats": state.batch_stats}
