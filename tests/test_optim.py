"""The training recipes against TensorFlow itself: TF1 RMSProp (slim), Keras RMSprop (tpu), TF's EMA."""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mnv2_jax.train import optim

tf = pytest.importorskip("tensorflow")
# TensorFlow must not take GPU memory that JAX needs (hide devices from TF only).
tf.config.set_visible_devices([], "GPU")

# A small tree with every kind of leaf the model has, named as in mnv2_jax.models.mobilenet_v2.
SHAPES = {
    "stem": {"conv": {"kernel": (3, 3, 3, 4)}, "bn": {"scale": (4,), "bias": (4,)}},
    "block_1": {
        "expand": {"conv": {"kernel": (1, 1, 4, 6)}, "bn": {"scale": (6,), "bias": (6,)}},
        "depthwise": {"conv": {"kernel": (3, 3, 1, 6)}, "bn": {"scale": (6,), "bias": (6,)}},
        "project": {"conv": {"kernel": (1, 1, 6, 4)}, "bn": {"scale": (4,), "bias": (4,)}},
    },
    "classifier": {"kernel": (4, 3), "bias": (3,)},
}
DECAYED = {
    "stem/conv/kernel",
    "block_1/expand/conv/kernel",
    "block_1/project/conv/kernel",
    "classifier/kernel",
}


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}/"))
        else:
            out[prefix + key] = value
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *heads, last = path.split("/")
        node = tree
        for head in heads:
            node = node.setdefault(head, {})
        node[last] = value
    return tree


def _config(recipe: str, batch_size: int, **optim_overrides: object) -> ml_collections.ConfigDict:
    optim_keys = dict.fromkeys(optim.RECIPES[recipe])
    optim_keys.update(optim_overrides)
    return ml_collections.ConfigDict({"recipe": recipe, "batch_size": batch_size, "optim": optim_keys})


def _random_problem(
    num_steps: int, seed: int = 0
) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    params = {p: rng.normal(size=s).astype(np.float32) for p, s in _leaves(SHAPES).items()}
    grads = [
        {p: rng.normal(size=s).astype(np.float32) for p, s in _leaves(SHAPES).items()}
        for _ in range(num_steps)
    ]
    return params, grads


def _run_optax(config, steps_per_epoch, params, grads) -> dict[str, np.ndarray]:
    tx = optim.create_optimizer(config, steps_per_epoch)
    p = _unflatten({k: jnp.asarray(v) for k, v in params.items()})
    state = tx.init(p)
    step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
    for g in grads:
        p, state = step(p, state, _unflatten(g))
    return {k: np.asarray(v) for k, v in _leaves(p).items()}


def _reference_lr(step: int, peak: float, rate: float, decay_steps: int, warmup_steps: int) -> float:
    """Model Garden's LinearWarmup(ExponentialDecay(staircase)) from 0, written out independently."""
    decayed = peak * rate ** (step // decay_steps)
    if step < warmup_steps:
        return step / warmup_steps * peak * rate ** (warmup_steps // decay_steps)
    return decayed


def test_slim_matches_tf1_rmsprop_with_l2():
    # Batch 192 -> lr 0.09; 2 steps per epoch -> decay every int(2.5 * 2) = 5 steps, so the
    # 12 steps cross two staircase boundaries (the lr changes inside the momentum accumulator).
    batch, spe, wd, num_steps = 192, 2, 4e-5 * 100, 12  # a large wd so that a wrong mask shows
    params, grads = _random_problem(num_steps)
    got = _run_optax(_config("slim", batch, weight_decay=wd), spe, params, grads)

    variables = {k: tf.Variable(v) for k, v in params.items()}
    lr = tf.Variable(0.0)
    opt = tf.compat.v1.train.RMSPropOptimizer(lambda: lr.read_value(), decay=0.9, momentum=0.9, epsilon=1.0)
    for step, g in enumerate(grads):
        lr.assign(_reference_lr(step, 0.045 * batch / 96, 0.98, 5, 0))
        with tf.GradientTape() as tape:
            # The task loss's gradient is g; slim adds wd * tf.nn.l2_loss(w) for regularised kernels.
            loss = tf.add_n([tf.reduce_sum(tf.constant(g[k]) * v) for k, v in variables.items()])
            loss += tf.add_n([wd * tf.nn.l2_loss(variables[k]) for k in DECAYED])
        names = list(variables)
        opt.apply_gradients(
            zip(tape.gradient(loss, [variables[k] for k in names]), [variables[k] for k in names])
        )
    for k, v in variables.items():
        np.testing.assert_allclose(got[k], v.numpy(), rtol=2e-5, atol=1e-6, err_msg=k)


def test_tpu_matches_keras_rmsprop_with_l2():
    keras = pytest.importorskip("keras")
    # Batch 256 -> lr 0.016; 2 steps per epoch -> 10 warm-up steps, decay every 5 steps.
    batch, spe, wd, num_steps = 256, 2, 1e-5 * 100, 14
    params, grads = _random_problem(num_steps, seed=1)
    got = _run_optax(_config("tpu", batch, weight_decay=wd), spe, params, grads)

    names = list(params)
    variables = [keras.Variable(params[k]) for k in names]
    opt = keras.optimizers.RMSprop(learning_rate=1.0, rho=0.9, momentum=0.9, epsilon=0.002)
    l2 = keras.regularizers.L2(wd / 2)  # Model Garden: l2(l2_weight_decay / 2.0)
    for step, g in enumerate(grads):
        opt.learning_rate = _reference_lr(step, 0.008 * batch / 128, 0.96, 5, 10)
        with tf.GradientTape() as tape:
            loss = tf.add_n([tf.reduce_sum(tf.constant(g[k]) * v) for k, v in zip(names, variables)])
            loss += tf.add_n([l2(v) for k, v in zip(names, variables) if k in DECAYED])
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
    for k, v in zip(names, variables):
        np.testing.assert_allclose(got[k], np.asarray(v.numpy()), rtol=2e-5, atol=1e-6, err_msg=k)


def test_recipes_resolve_and_override():
    slim = optim.resolve_optim(_config("slim", 96))
    assert slim["rmsprop_initial_scale"] == 1.0 and slim["rmsprop_epsilon"] == 1.0
    tpu = optim.resolve_optim(_config("tpu", 4096, weight_decay=3e-5))
    assert tpu["weight_decay"] == 3e-5 and tpu["rmsprop_initial_scale"] == 0.0 and tpu["warmup_epochs"] == 5
    assert optim.scaled_learning_rate(_config("tpu", 4096)) == pytest.approx(0.256)
    with pytest.raises(ValueError, match="recipe.*slim.*tpu"):
        optim.resolve_optim(ml_collections.ConfigDict({"recipe": "sgd", "batch_size": 96}))
    with pytest.raises(ValueError, match="weight_decy"):
        optim.resolve_optim(
            ml_collections.ConfigDict({"recipe": "slim", "batch_size": 96, "optim": {"weight_decy": 1.0}})
        )


def test_every_recipe_takes_every_optim_key_of_the_base_config():
    """A config's `optim` sub-dict holds one key set; each recipe fills all of it (an unknown key
    is an error, so a recipe missing one would fail here)."""
    from mnv2_jax import config as config_lib

    keys = set(config_lib.base_config().optim.keys())
    for recipe, values in optim.RECIPES.items():
        assert set(values) == keys, recipe
        config = ml_collections.ConfigDict(
            {"recipe": recipe, "batch_size": 32, "total_steps": 10, "optim": dict.fromkeys(keys)}
        )
        resolved = optim.resolve_optim(config)
        assert resolved["optimizer"] in optim.OPTIMIZERS and resolved["lr_schedule"] in optim.LR_SCHEDULES
        optim.create_optimizer(config, steps_per_epoch=5)


def test_exponential_decay_period_in_steps_or_epochs():
    # `lr_decay_steps` replaces the period in epochs, under any optimizer.
    config = _config(
        "deeplab", 16, lr_schedule="exponential", lr_decay_rate=0.5, lr_decay_steps=3, lr_power=None
    )
    sched = optim.learning_rate_schedule(config, steps_per_epoch=100)
    assert [float(sched(step)) for step in (0, 2, 3, 6)] == pytest.approx([0.007, 0.007, 0.0035, 0.00175])
    # Without either period the schedule has no decay step: the error names the key.
    with pytest.raises(ValueError, match="'optim.lr_decay_epochs'"):
        optim.resolve_optim(_config("deeplab", 16, lr_schedule="exponential", lr_decay_rate=0.5))
    with pytest.raises(ValueError, match=r"'optim.optimizer': must be one of \('rmsprop', 'momentum'\)"):
        optim.resolve_optim(_config("tf_od", 24, optimizer="adam"))


def test_schedule_values():
    # slim at batch 192 with 100 steps per epoch: peak 0.09, x0.98 every 250 steps, no warm-up.
    sched = optim.learning_rate_schedule(_config("slim", 192), 100)
    for step, want in [(0, 0.09), (249, 0.09), (250, 0.09 * 0.98), (499, 0.09 * 0.98), (500, 0.09 * 0.98**2)]:
        assert float(sched(step)) == pytest.approx(want, rel=1e-6), step
    # TF-Slim truncates 2.5 * N / B, not 2.5 * (N // B): 10.4 steps per epoch -> decay every 26 steps.
    sched = optim.learning_rate_schedule(_config("slim", 96), 10.4)
    assert float(sched(25)) == pytest.approx(0.045) and float(sched(26)) == pytest.approx(0.045 * 0.98)
    # tpu at 4096 with Model Garden's 312 steps per epoch: 1560 warm-up steps, decay every 780 steps.
    sched = optim.learning_rate_schedule(_config("tpu", 4096), 312)
    peak = 0.256
    assert float(sched(0)) == 0.0
    # The warm-up ramps towards the decayed value at its end, not towards the peak.
    assert float(sched(780)) == pytest.approx(780 / 1560 * peak * 0.96**2, rel=1e-6)
    assert float(sched(1559)) == pytest.approx(1559 / 1560 * peak * 0.96**2, rel=1e-6)
    assert float(sched(1560)) == pytest.approx(peak * 0.96**2, rel=1e-6)
    assert float(sched(2339)) == pytest.approx(peak * 0.96**2, rel=1e-6)
    assert float(sched(2340)) == pytest.approx(peak * 0.96**3, rel=1e-6)
    assert float(sched(156000)) == pytest.approx(peak * 0.96**200, rel=1e-4)


def test_cosine_schedule_after_the_warm_up_reaches_zero_at_the_last_step():
    # 10 steps per epoch, 2 warm-up epochs, 120 steps: ramp over 20 steps, then a half cosine over 100.
    config = _config("slim", 96, lr=0.1, lr_schedule="cosine", warmup_epochs=2.0)
    config.total_steps = 120
    sched = optim.learning_rate_schedule(config, 10)
    assert float(sched(0)) == 0.0 and float(sched(10)) == pytest.approx(0.05)
    assert float(sched(20)) == pytest.approx(0.1)
    assert float(sched(70)) == pytest.approx(0.05, rel=1e-5)  # halfway down
    assert float(sched(120)) == pytest.approx(0.0, abs=1e-9) and float(sched(500)) == pytest.approx(
        0.0, abs=1e-9
    )
    # A run given in epochs decays over those epochs' steps.
    config.total_steps, config.total_epochs = None, 3.5
    assert float(optim.learning_rate_schedule(config, 10)(35)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match=r"optim.lr_schedule.*exponential.*poly.*cosine.*'linear'"):
        optim.resolve_optim(_config("slim", 96, lr_schedule="linear"))
    with pytest.raises(ValueError, match="cosine.*total_steps or total_epochs"):
        optim.learning_rate_schedule(_config("slim", 96, lr_schedule="cosine"), 10)


def test_current_learning_rate_follows_the_schedule():
    config = _config("tpu", 256)
    tx = optim.create_optimizer(config, 2)
    params = {"classifier": {"kernel": jnp.ones((2, 2))}}
    state = tx.init(params)
    sched = optim.learning_rate_schedule(config, 2)
    assert float(optim.current_learning_rate(state)) == float(sched(0))
    for step in range(12):
        _, state = tx.update(params, state, params)
        assert float(optim.current_learning_rate(state)) == pytest.approx(float(sched(step)), rel=1e-6)


def test_weight_decay_mask_on_model_like_tree():
    params = _unflatten({k: np.zeros(s, np.float32) for k, s in _leaves(SHAPES).items()})
    params["head"] = {
        "conv": {"kernel": np.zeros((1, 1, 4, 8))},
        "bn": {"scale": np.zeros(8), "bias": np.zeros(8)},
    }
    mask = _leaves(optim.weight_decay_mask({"params": params})["params"])
    assert {k for k, v in mask.items() if v} == DECAYED | {"head/conv/kernel"}
    assert optim.decays(("block_3", "depthwise", "conv", "kernel")) is False
    assert optim.decays(("classifier", "bias")) is False
    assert optim.decays(()) is False


def test_ema_matches_tf_exponential_moving_average():
    assert float(optim.ema_decay_at(0, 0.9999)) == pytest.approx(0.1)
    assert float(optim.ema_decay_at(10, 0.9999)) == pytest.approx(11 / 20)
    assert float(optim.ema_decay_at(10**6, 0.9999)) == pytest.approx(0.9999)
    rng = np.random.default_rng(2)
    values = [rng.normal(size=5).astype(np.float32) for _ in range(6)]
    var, num_updates = tf.Variable(values[0]), tf.Variable(0, dtype=tf.int64)
    tf_ema = tf.compat.v1.train.ExponentialMovingAverage(0.9999, num_updates=num_updates)
    tf_ema.apply([var])  # creates the shadow variable at the variable's current value
    ema = jnp.asarray(values[0])
    update = jax.jit(optim.ema_update)
    for step, value in enumerate(values[1:]):
        var.assign(value)
        num_updates.assign(step)
        tf_ema.apply([var])
        ema = update(ema, jnp.asarray(value), step, 0.9999)
        np.testing.assert_allclose(np.asarray(ema), tf_ema.average(var).numpy(), rtol=1e-6, atol=1e-7)
    # dtypes are kept; non-float leaves take the new value; decay 0 follows the variables.
    tree = {"w": jnp.ones(3, jnp.bfloat16), "count": jnp.array(3)}
    out = optim.ema_update(tree, {"w": jnp.zeros(3, jnp.bfloat16), "count": jnp.array(4)}, 5, 0.9999)
    assert out["w"].dtype == jnp.bfloat16 and int(out["count"]) == 4
    assert float(out["w"][0]) == pytest.approx(1 - (1 - 6 / 15), rel=1e-2)
    assert float(optim.ema_update(jnp.ones(()), jnp.zeros(()), 10**6, 0.0)) == 0.0


def test_hyperparams_change_without_recompiling():
    traces = 0

    def make_step(tx):
        def step(params, state, grads):
            nonlocal traces
            traces += 1
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        return jax.jit(step)

    params = {"conv": {"kernel": jnp.ones((1, 1, 2, 2))}, "bn": {"scale": jnp.ones(2)}}
    grads = jax.tree.map(jnp.ones_like, params)
    tx = optim.create_optimizer(_config("slim", 96), 10)
    step = make_step(tx)
    state = tx.init(params)
    base, _ = step(params, state, grads)
    changed = optim.set_hyperparams(state, weight_decay=0.5, lr_scale=0.2)
    assert float(changed.hyperparams["weight_decay"]) == 0.5
    moved, _ = step(params, changed, grads)
    assert traces == 1
    assert not np.allclose(base["conv"]["kernel"], moved["conv"]["kernel"])
    # The values took effect: lr 0.2 instead of 0.045 and decay 0.5 on the kernel only.
    np.testing.assert_allclose(moved["bn"]["scale"] - 1, (base["bn"]["scale"] - 1) * 0.2 / 0.045, rtol=1e-5)

    # Another run of a sweep (other lr and weight decay in the config) lowers to the same program,
    # so the persistent compilation cache serves it.
    other = optim.create_optimizer(_config("slim", 96, lr=0.1, weight_decay=1e-3), 10)
    lowered = [make_step(t).lower(params, t.init(params), grads).as_text() for t in (tx, other)]
    assert lowered[0] == lowered[1]
    with pytest.raises(ValueError, match="lr_scale or weight_decay"):
        optim.set_hyperparams(state, momentum=0.5)
    assert math.isfinite(float(optim.current_learning_rate(changed)))
