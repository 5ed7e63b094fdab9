"""The paper's training recipes as optax transformations.

Four recipes, each a set of plain values (`RECIPES`) that a config's `optim`
sub-dict may override key by key (`resolve_optim`):

* ``slim`` -- the public TF-Slim recipe that reached 72.0 (Section 6.1 of the
  paper plus `train_image_classifier.py`): TF1 `RMSPropOptimizer` (running
  average of g^2 starting at 1, epsilon 1.0 *inside* the square root, momentum
  0.9), learning rate 0.045 x B/96 decayed x0.98 every 2.5 epochs (staircase),
  no warm-up, L2 4e-5.
* ``tpu`` -- TF Model Garden's `imagenet_mobilenetv2_tpu.yaml` (72.72): Keras
  RMSprop (running average starting at 0, epsilon 0.002 -- also inside the
  square root: both Keras 2's `ResourceApplyRMSProp` kernel and Keras 3's
  `update_step` compute ``lr * g / sqrt(velocity + epsilon)``), learning rate
  0.008 x B/128 with 5 linear warm-up epochs and x0.96 every 2.5 epochs, L2 1e-5
  (Model Garden uses `keras.regularizers.l2(wd / 2)`, i.e. the same gradient
  ``wd * w`` as TF-Slim's `wd * tf.nn.l2_loss(w)`).
* ``tf_od`` -- `ssdlite_mobilenet_v2_coco.config` of TF's Object Detection API
  (the paper's Table 6): TF1 RMSProp as in ``slim``, learning rate 0.004 x B/24
  decayed x0.95 every 800,720 steps (`lr_decay_steps`: a period in steps, not
  epochs), L2 4e-5, no label smoothing, no moving average.
* ``deeplab`` -- TF DeepLab's `train.py` for Mobile DeepLabv3 on PASCAL
  `train_aug` (the paper's Table 7): momentum SGD (0.9; TF's `MomentumOptimizer`
  is `optax.sgd(momentum=...)`), the "poly" learning rate 0.007 x B/16 x
  (1 - step/total_steps)^0.9, L2 4e-5, no moving average.

The slim, tpu and tf_od recipes are exactly `optax.rmsprop(..., eps_in_sqrt=True, initial_scale=...,
momentum=...)`: optax's `scale_by_rms` -> `scale_by_learning_rate` -> `trace`
is TF's ``ms = d*ms + (1-d)*g^2; mom = m*mom + lr*g/sqrt(ms+eps); w -= mom``
(learning rate inside the momentum accumulator), so no custom transformation
is needed.

L2 regularisation is added to the gradient *before* RMSProp (it is a loss term
in both TF recipes, so it also enters the running average of g^2), only on
regular convolution kernels and the classifier kernel (`weight_decay_mask`), unless
a task's own rule for its head decides otherwise (`Task.weight_decay_rule`).

Sweeps: the peak learning rate (`lr_scale`) and the weight decay live in the
optimizer state as float32 arrays (`optax.inject_hyperparams`), so runs that
differ only in them trace to the same XLA program -- one jit trace inside a
process (`set_hyperparams`), and persistent-compilation-cache hits across
processes. The schedule's *shape* (warm-up, decay rate, decay period in
steps) is compiled in; it changes with the batch size, which recompiles anyway.

The exponential moving average for evaluation (`ema_update`) is a pure
function on any pytree (weights and batch-norm statistics together), with TF's
`ExponentialMovingAverage(decay, num_updates)` warm-up.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

# Every key a config's `optim` sub-dict may set; None there means "the recipe's value".
RECIPES: dict[str, dict[str, Any]] = {
    "slim": {
        "lr": 0.045,  # at lr_reference_batch; scaled linearly with the global batch
        "lr_reference_batch": 96,
        "lr_decay_rate": 0.98,
        "lr_decay_epochs": 2.5,
        "lr_decay_steps": None,  # a decay period in steps instead of epochs
        "warmup_epochs": 0.0,
        "rmsprop_decay": 0.9,
        "momentum": 0.9,
        "rmsprop_epsilon": 1.0,  # inside the sqrt (TF1 ApplyRMSProp)
        "rmsprop_initial_scale": 1.0,  # TF1 RMSPropOptimizer initialises its "rms" slot with ones
        "weight_decay": 4e-5,  # gradient += wd * w (slim.l2_regularizer = wd * sum(w^2) / 2)
        "label_smoothing": 0.1,
        "ema_decay": 0.9999,
        "grad_clip_norm": None,
        "optimizer": "rmsprop",
        "lr_schedule": "exponential",  # staircase: x lr_decay_rate every lr_decay_epochs
        "lr_power": None,
    },
    "tpu": {
        "lr": 0.008,
        "lr_reference_batch": 128,
        "lr_decay_rate": 0.96,
        "lr_decay_epochs": 2.5,
        "lr_decay_steps": None,
        "warmup_epochs": 5.0,
        "rmsprop_decay": 0.9,  # Keras' rho
        "momentum": 0.9,
        "rmsprop_epsilon": 0.002,  # inside the sqrt in Keras 2 and Keras 3 alike
        "rmsprop_initial_scale": 0.0,  # Keras' velocity starts at zero
        "weight_decay": 1e-5,  # Model Garden: keras l2(wd / 2) -> gradient += wd * w
        "label_smoothing": 0.1,
        # Model Garden's 72.72 run kept no moving average (its yaml has no `ema`); the
        # average here only adds `eval_ema/*` -- compare that run with `eval/*`.
        "ema_decay": 0.9999,
        "grad_clip_norm": None,
        "optimizer": "rmsprop",
        "lr_schedule": "exponential",
        "lr_power": None,
    },
    "deeplab": {
        "lr": 0.007,  # "Use 0.007 when training on PASCAL augmented training set, train_aug"
        "lr_reference_batch": 16,  # Model Garden: 0.007 x batch / 16
        "lr_decay_rate": None,
        "lr_decay_epochs": None,
        "lr_decay_steps": None,
        "warmup_epochs": 0.0,
        "rmsprop_decay": None,
        "momentum": 0.9,
        "rmsprop_epsilon": None,
        "rmsprop_initial_scale": None,
        "weight_decay": 4e-5,  # "use 0.00004 for MobileNet-V2"
        "label_smoothing": 0.0,
        "ema_decay": 0.0,
        "grad_clip_norm": None,
        "optimizer": "momentum",
        "lr_schedule": "poly",
        "lr_power": 0.9,
    },
    # The detection system of the paper's Table 6: `ssdlite_mobilenet_v2_coco.config` of TF's
    # Object Detection API (TF1 RMSProp as in 'slim'), batch 24, lr 0.004 x0.95 every 800,720 steps.
    "tf_od": {
        "lr": 0.004,
        "lr_reference_batch": 24,
        "lr_decay_rate": 0.95,
        "lr_decay_epochs": None,
        "lr_decay_steps": 800_720,
        "warmup_epochs": 0.0,
        "rmsprop_decay": 0.9,
        "momentum": 0.9,
        "rmsprop_epsilon": 1.0,
        "rmsprop_initial_scale": 1.0,
        "weight_decay": 4e-5,  # l2_regularizer(0.00004) on every conv of backbone and head
        "label_smoothing": 0.0,
        "ema_decay": 0.0,  # the config keeps no moving average
        "grad_clip_norm": None,
        "optimizer": "rmsprop",
        "lr_schedule": "exponential",  # staircase: x lr_decay_rate every lr_decay_steps
        "lr_power": None,
    },
}
OPTIMIZERS = ("rmsprop", "momentum")
LR_SCHEDULES = ("exponential", "poly", "cosine")


def resolve_optim(config: Any) -> dict[str, Any]:
    """The recipe named by `config.recipe`, overlaid with the non-None values of `config.optim`.

    Unknown keys in `config.optim` are an error rather than silently ignored: a
    misspelt override would otherwise train with the recipe's value unnoticed.
    """
    recipe = config.get("recipe", None)
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got recipe={recipe!r}")
    resolved = dict(RECIPES[recipe])
    overrides = config.get("optim", None) or {}
    for key, value in overrides.items():
        if key not in resolved:
            raise ValueError(f"unknown key optim.{key}; known keys: {sorted(resolved)}")
        if value is not None:
            resolved[key] = value
    for key, allowed in (("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES)):
        if resolved[key] not in allowed:
            raise ValueError(f"config key 'optim.{key}': must be one of {allowed}, got {resolved[key]!r}")
    needed = {"poly": ("lr_power",), "exponential": ("lr_decay_rate",), "cosine": ()}[resolved["lr_schedule"]]
    if resolved["lr_schedule"] == "exponential" and resolved["lr_decay_steps"] is None:
        needed += ("lr_decay_epochs",)  # the decay period: in steps if set, else in epochs
    if resolved["optimizer"] == "rmsprop":
        needed += ("rmsprop_decay", "rmsprop_epsilon", "rmsprop_initial_scale")
    for key in needed:
        if resolved[key] is None:
            raise ValueError(
                f"config key 'optim.{key}': recipe {recipe!r} with optimizer {resolved['optimizer']!r} and "
                f"lr_schedule {resolved['lr_schedule']!r} needs a value"
            )
    return resolved


def scaled_learning_rate(config: Any) -> float:
    """Peak learning rate for the config's global batch: ``lr * batch_size / lr_reference_batch``."""
    opt = resolve_optim(config)
    return float(opt["lr"]) * config.batch_size / opt["lr_reference_batch"]


def total_train_steps(config: Any, steps_per_epoch: float) -> int | None:
    """The run's length in updates (`total_steps`, or `total_epochs` x steps per epoch), None if unset."""
    if config.get("total_steps", None) is not None:
        return int(config.total_steps)
    if config.get("total_epochs", None) is not None:
        return max(1, math.ceil(config.total_epochs * steps_per_epoch))
    return None


def _schedule_shape(
    opt: Mapping[str, Any], steps_per_epoch: float, total_steps: int | None = None
) -> optax.Schedule:
    """The learning-rate schedule divided by its peak value: a unitless factor of the step count.

    ``lr_schedule='poly'`` (TF's `polynomial_decay` to 0, DeepLab's "poly" policy):
    ``(1 - min(count, total_steps) / total_steps) ** lr_power``. ``'exponential'``:
    staircase exponential decay ``rate ** floor(count / decay_steps)`` with
    ``decay_steps = lr_decay_steps`` if set, else ``int(lr_decay_epochs * steps_per_epoch)``. Pass
    `steps_per_epoch` = num_examples / batch (a float) to get TF-Slim's
    ``int(num_samples * 2.5 / batch)``, or num_examples // batch to get Model
    Garden's ``int(2.5 * steps_per_epoch)`` (780 at batch 4096). ``'cosine'``:
    ``0.5 * (1 + cos(pi * t))`` with t going from 0 at the end of the warm-up to 1 at
    `total_steps` (the factor reaches 0 there): the usual choice for a short run on a small
    dataset, where a few staircase steps would leave the learning rate high at the end.

    Warm-up (Model Garden's `LinearWarmup` with `warmup_learning_rate=0`): for
    ``count < warmup_steps`` the factor rises linearly from 0 towards the decayed
    value *at* ``warmup_steps``; afterwards the decay is evaluated at the global
    step (not restarted at the end of the warm-up). `count` is the number of
    updates already applied, so the very first update of a warm-up uses 0.
    """
    warmup_steps = int(opt["warmup_epochs"] * steps_per_epoch)
    kind = opt.get("lr_schedule", "exponential")
    if kind in ("poly", "cosine") and total_steps is None:
        raise ValueError(
            f"optim.lr_schedule={kind!r} needs the run's length: set total_steps or total_epochs"
        )
    if kind == "cosine":
        cosine_steps = max(1, int(total_steps) - warmup_steps)

        def decayed(count):
            return 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip((count - warmup_steps) / cosine_steps, 0.0, 1.0)))

        at_warmup_end = 1.0
    elif kind == "poly":
        total, power = max(1, int(total_steps)), float(opt["lr_power"])

        def decayed(count):
            return (1.0 - jnp.minimum(count, total) / total) ** power

        at_warmup_end = (1.0 - min(warmup_steps, total) / total) ** power
    else:
        if opt.get("lr_decay_steps") is not None:
            decay_steps = max(1, int(opt["lr_decay_steps"]))
        else:
            decay_steps = max(1, int(opt["lr_decay_epochs"] * steps_per_epoch))
        rate = float(opt["lr_decay_rate"])

        def decayed(count):
            return jnp.power(rate, jnp.floor(count / decay_steps))

        at_warmup_end = rate ** math.floor(warmup_steps / decay_steps)

    def shape(count: jax.typing.ArrayLike) -> jax.Array:
        count = jnp.asarray(count, jnp.float32)
        if warmup_steps <= 0:
            return decayed(count)
        return jnp.where(count < warmup_steps, count / warmup_steps * at_warmup_end, decayed(count))

    return shape


def learning_rate_schedule(config: Any, steps_per_epoch: float) -> optax.Schedule:
    """The absolute learning rate as a function of the number of updates already applied.

    This is what the optimizer applies (``lr_scale * shape(count)``) as long as
    `lr_scale` in its state is left at the config's value; meant for plots and
    checks -- read the live value with `current_learning_rate`.
    """
    peak = scaled_learning_rate(config)
    shape = _schedule_shape(
        resolve_optim(config), steps_per_epoch, total_train_steps(config, steps_per_epoch)
    )
    return lambda count: peak * shape(count)


def decays(path: tuple[str, ...]) -> bool:
    """Whether the parameter at `path` (names from the root) gets L2 weight decay.

    Only kernels of regular convolutions and of the classifier, as both TF
    recipes regularise them: TF-Slim's MobileNet sets `regularize_depthwise=False`
    and Model Garden passes no `depthwise_regularizer`; biases and batch-norm
    scale/offset are never regularised. Depthwise kernels are told apart by the
    module name (``.../depthwise/conv/kernel``) rather than by shape, so a 1x1
    depthwise conv or a single-channel regular conv cannot be misclassified.
    """
    return bool(path) and path[-1] == "kernel" and not any("depthwise" in name for name in path)


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def weight_decay_mask(params: Any, rule: Callable[[tuple[str, ...]], bool | None] | None = None) -> Any:
    """A pytree of bools shaped like `params`: True where `decays(path)`, unless `rule(path)` (a
    task's own rule for its head's parameters) says True or False instead of None."""

    def decided(path: tuple[str, ...]) -> bool:
        own = rule(path) if rule is not None else None
        return decays(path) if own is None else bool(own)

    return jax.tree_util.tree_map_with_path(
        lambda path, _: decided(tuple(_key_name(k) for k in path)), params
    )


def create_optimizer(
    config: Any, steps_per_epoch: float, decay_rule: Callable[[tuple[str, ...]], bool | None] | None = None
) -> optax.GradientTransformation:
    """The recipe's optimizer: L2 on the gradient -> optional clipping -> RMSProp with momentum
    (or momentum SGD, `optim.optimizer='momentum'`).

    The state is an `optax.InjectStatefulHyperparamsState` whose `hyperparams`
    hold ``lr_scale`` (peak learning rate, already scaled by the batch),
    ``weight_decay`` and ``lr_schedule`` (the unitless schedule factor, recomputed
    from the update count every step); the learning rate of an update is
    ``lr_scale * lr_schedule``. Change the first two with `set_hyperparams`.

    `decay_rule` is the task's weight-decay rule (`weight_decay_mask`).

    Clipping (`grad_clip_norm`, off in every recipe) acts on the total gradient,
    L2 term included, as Keras' `global_clipnorm` would on a loss carrying the
    regulariser.
    """
    opt = resolve_optim(config)
    shape = _schedule_shape(opt, steps_per_epoch, total_train_steps(config, steps_per_epoch))
    momentum = float(opt["momentum"]) or None
    clip = opt["grad_clip_norm"]

    def transform(
        lr_scale: jax.Array, lr_schedule: jax.Array, weight_decay: jax.Array
    ) -> optax.GradientTransformation:
        mask = functools.partial(weight_decay_mask, rule=decay_rule)
        parts = [optax.add_decayed_weights(weight_decay, mask=mask)]
        if clip is not None:
            parts.append(optax.clip_by_global_norm(clip))
        # RMSProp per parameter array, not on one raveled vector (`optax.flatten`):
        # XLA compiles one kernel per distinct fused computation, so arrays of the
        # same shape share their update kernels, whereas the slices that unravel a
        # flat vector differ in offset and each get their own (more kernels, a
        # slower compile, the same step time).
        if opt["optimizer"] == "momentum":
            # TF's MomentumOptimizer: accum = m * accum + g; w -= lr * accum.
            parts.append(optax.sgd(learning_rate=lr_scale * lr_schedule, momentum=momentum))
            return optax.chain(*parts)
        parts.append(
            optax.rmsprop(
                learning_rate=lr_scale * lr_schedule,
                decay=float(opt["rmsprop_decay"]),
                eps=float(opt["rmsprop_epsilon"]),
                initial_scale=float(opt["rmsprop_initial_scale"]),
                eps_in_sqrt=True,
                momentum=momentum,
            )
        )
        return optax.chain(*parts)

    # float32 regardless of the parameters' dtype, so that the state's structure
    # (and hence the compiled program) never depends on it.
    return optax.inject_hyperparams(transform, hyperparam_dtype=jnp.float32)(
        lr_scale=scaled_learning_rate(config),
        lr_schedule=shape,
        weight_decay=float(opt["weight_decay"]),
    )


def current_learning_rate(opt_state: Any) -> jax.Array:
    """The learning rate of the most recent update (before any update: of the first one)."""
    hp = opt_state.hyperparams
    return hp["lr_scale"] * hp["lr_schedule"]


def set_hyperparams(opt_state: Any, **values: float | jax.Array) -> Any:
    """`opt_state` with `lr_scale` and/or `weight_decay` replaced, without recompiling a jitted step.

    Also the way to apply a config's values to a state restored from a
    checkpoint, which otherwise keeps the values it was saved with.
    """
    hp = dict(opt_state.hyperparams)
    for name, value in values.items():
        if name not in ("lr_scale", "weight_decay"):
            raise ValueError(f"can set lr_scale or weight_decay, not {name!r}")
        hp[name] = jnp.asarray(value, hp[name].dtype)
    return opt_state._replace(hyperparams=hp)


def ema_decay_at(step: jax.typing.ArrayLike, ema_decay: jax.typing.ArrayLike) -> jax.Array:
    """TF's `ExponentialMovingAverage(ema_decay, num_updates=step)` decay: min(ema_decay, (1+t)/(10+t))."""
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.asarray(ema_decay, jnp.float32), (1.0 + t) / (10.0 + t))


def ema_update(
    ema_tree: Any, new_tree: Any, step: jax.typing.ArrayLike, ema_decay: jax.typing.ArrayLike
) -> Any:
    """One moving-average update: ``ema -= (1 - decay) * (ema - new)`` with the warm-up decay.

    Call it after every optimizer update with `new_tree` the freshly updated
    variables (weights and batch-norm statistics) and `step` the number of
    updates applied *before* this one -- the optimizer step counter before its
    increment, as TF-Slim passes `global_step` (0 on the first call, so the
    first average moves 90% of the way: decay 0.1). Model Garden passes the
    count after the increment (decay 2/11 first); the two differ only in the
    first few hundred steps. Initialise `ema_tree` as a copy of the initial
    variables (TF's shadow variables start at the variables' initial values).

    `ema_decay` = 0 makes the average follow the variables exactly. The arithmetic
    is float32 and each leaf keeps its dtype; non-float leaves take the new value.
    `step` and `ema_decay` may be traced values.
    """
    decay = ema_decay_at(step, ema_decay)

    def update(ema: jax.Array, new: jax.Array) -> jax.Array:
        if not jnp.issubdtype(jnp.result_type(ema), jnp.floating):
            return new
        ema32 = jnp.asarray(ema, jnp.float32)
        return (ema32 - (1.0 - decay) * (ema32 - jnp.asarray(new, jnp.float32))).astype(jnp.result_type(ema))

    return jax.tree.map(update, ema_tree, new_tree)
