"""The compiled train and eval steps (`mnv2_jax.train.step`), in-process on 8 simulated CPU devices.

Data parallelism must not change the arithmetic: the train step jitted over a mesh of 8 devices (batch
sharded on 'data', state replicated) equals the single-device step on the same global batch, dropout
included. Per-group batch norm normalises each group by its own statistics; a NaN batch changes nothing;
padded eval examples count for nothing; the EMA after one step is TF's warm-up average.

Synthetic batches: no dataset is read here.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import classification_loss, eval_step_for, model_for
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mnv2_jax import config as config_lib
from mnv2_jax.models import inference
from mnv2_jax.train import loop as train
from mnv2_jax.train import optim
from mnv2_jax.train import state as state_lib
from mnv2_jax.train import step as steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 10
BATCH = 32
RES = 32


def tiny_config(**overrides):
    config = config_lib.load_config(os.path.join(REPO, "configs", "mnist.py"))
    # No warm-up: the very first update has a non-zero learning rate, so one step moves every weight.
    return config_lib.apply_overrides(
        config, {"max_repeats": 1, "batch_size": BATCH, "optim.warmup_epochs": 0.0, **overrides}
    )


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.fixture(scope="module")
def setup():
    assert jax.device_count() == 8, "tests/conftest.py must set XLA_FLAGS before JAX initialises"
    train.enable_compilation_cache()
    config = tiny_config()
    model = model_for(config, NUM_CLASSES)
    tx = optim.create_optimizer(config, steps_per_epoch=10)
    opt = optim.resolve_optim(config)
    assert opt["ema_decay"] > 0.1 and opt["label_smoothing"] > 0  # so the checks below test something
    state = jax.jit(lambda: state_lib.create_train_state(model, tx, RES, seed=0))()
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.uniform(-1, 1, (BATCH, RES, RES, 3)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32),
    }
    step = steps.make_train_step(
        model, tx, loss_fn=classification_loss(opt["label_smoothing"]), ema_decay=opt["ema_decay"]
    )
    single = jax.jit(step)  # one device, no sharding annotations
    new_state, metrics = single(state, batch)
    return dict(
        config=config, model=model, tx=tx, opt=opt, state=state, batch=batch, single=single,
        new_state=new_state, metrics=metrics,
    )  # fmt: skip


def test_sharded_step_equals_single_device_step(setup):
    mesh = train.data_mesh()
    assert mesh.shape == {"data": 8}
    replicated, by_data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    step = steps.make_train_step(
        setup["model"],
        setup["tx"],
        loss_fn=classification_loss(setup["opt"]["label_smoothing"]),
        ema_decay=setup["opt"]["ema_decay"],
    )
    sharded = jax.jit(step, in_shardings=(replicated, by_data), out_shardings=(replicated, replicated))
    state = jax.device_put(setup["state"], replicated)
    batch = jax.device_put(setup["batch"], by_data)
    assert len(batch["image"].sharding.device_set) == 8
    new_state, metrics = sharded(state, batch)

    assert bool(metrics["finite"])
    np.testing.assert_allclose(float(metrics["loss"]), float(setup["metrics"]["loss"]), rtol=1e-5)
    assert float(metrics["top1"]) == float(setup["metrics"]["top1"])
    assert int(new_state.step) == int(setup["new_state"].step) == 1
    # Every leaf of the state: weights, batch-norm statistics, optimizer slots, EMA, RNG, metric sums.
    ours, reference = leaves(new_state), leaves(setup["new_state"])
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # The step did something: the weights moved away from the initial ones.
    moved = [
        not np.array_equal(a, b) for a, b in zip(leaves(setup["state"].params), leaves(new_state.params))
    ]
    assert all(moved)


def test_per_group_batch_norm_normalises_each_group_by_itself(setup):
    # Dropout off: the manual computation below then depends on nothing but the batch-norm grouping.
    config = tiny_config(dropout_rate=0.0)
    model = model_for(config, NUM_CLASSES)
    tx, opt, state, batch = setup["tx"], setup["opt"], setup["state"], setup["batch"]
    grouped_step = jax.jit(
        steps.make_train_step(
            model, tx, loss_fn=classification_loss(opt["label_smoothing"]), ema_decay=0.0, bn_groups=2
        )
    )
    new_state, metrics = grouped_step(state, batch)

    variables = {"params": state.params, "batch_stats": state.batch_stats}

    @jax.jit
    def forward(images):
        return model.apply(variables, images, train=True, mutable=["batch_stats"])

    def loss_of(logits, labels):
        targets = optax.smooth_labels(jax.nn.one_hot(labels, NUM_CLASSES), opt["label_smoothing"])
        return optax.softmax_cross_entropy(logits, targets)

    halves = [forward(batch["image"][:16]), forward(batch["image"][16:])]
    manual = jnp.mean(
        jnp.concatenate(
            [loss_of(halves[0][0], batch["label"][:16]), loss_of(halves[1][0], batch["label"][16:])]
        )
    )
    global_logits, _ = forward(batch["image"])
    global_loss = jnp.mean(loss_of(global_logits, batch["label"]))

    np.testing.assert_allclose(float(metrics["loss"]), float(manual), rtol=1e-5)
    assert abs(float(metrics["loss"]) - float(global_loss)) > 1e-3, (
        "groups of 16 normalised as one batch of 32"
    )
    # The running statistics kept are the mean of the two groups' updates.
    expected = jax.tree.map(
        lambda a, b: (a + b) / 2, halves[0][1]["batch_stats"], halves[1][1]["batch_stats"]
    )
    for a, b in zip(leaves(new_state.batch_stats), leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # ema_decay=0: the "average" follows the variables exactly.
    for a, b in zip(leaves(new_state.ema_params), leaves(new_state.params)):
        np.testing.assert_array_equal(a, b)


def test_nan_batch_leaves_state_unchanged(setup):
    batch = {k: v.copy() for k, v in setup["batch"].items()}
    batch["image"][3, 5, 7, 1] = np.nan
    new_state, metrics = setup["single"](setup["state"], batch)
    assert not bool(metrics["finite"])
    assert not np.isfinite(float(metrics["loss"]))
    before, after = leaves(setup["state"]), leaves(new_state)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)  # step counter and metric sums included
    assert bool(setup["metrics"]["finite"])  # the same batch without the NaN is fine


def test_eval_step_sums_ignore_padding(setup):
    model, state = setup["model"], setup["new_state"]
    variables = state_lib.eval_variables(state, ema=False)
    rng = np.random.default_rng(1)
    real = 10
    images = rng.uniform(-1, 1, (16, RES, RES, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, 16).astype(np.int32)
    mask = np.array([1.0] * real + [0.0] * (16 - real), np.float32)
    eval_step = jax.jit(eval_step_for(model))
    sums = jax.device_get(eval_step(variables, {"image": images, "label": labels, "mask": mask}))

    # Different garbage in the padded rows changes nothing.
    images2, labels2 = images.copy(), labels.copy()
    images2[real:] = rng.uniform(-1, 1, images2[real:].shape)
    labels2[real:] = (labels2[real:] + 3) % NUM_CLASSES
    sums2 = jax.device_get(eval_step(variables, {"image": images2, "label": labels2, "mask": mask}))
    for key in ("loss", "top1", "top5", "count"):
        np.testing.assert_allclose(sums[key], sums2[key], rtol=1e-6)

    # And equals the sums over the real rows, computed independently in numpy (eval mode: no dropout,
    # running statistics; per-example results do not depend on the other rows).
    logits = np.asarray(model.apply(variables, images, train=False), np.float64)[:real]
    y = labels[:real]
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    assert float(sums["count"]) == real
    np.testing.assert_allclose(float(sums["loss"]), -logp[np.arange(real), y].sum(), rtol=1e-5)
    assert float(sums["top1"]) == float((logits.argmax(-1) == y).sum())
    rank = (logits > logits[np.arange(real), y][:, None]).sum(-1)
    assert float(sums["top5"]) == float((rank < 5).sum())


def test_ema_after_one_step_is_tf_warmup_average(setup):
    state, new_state = setup["state"], setup["new_state"]
    # TF ExponentialMovingAverage(decay, num_updates=0): decay = min(decay, (1 + 0) / (10 + 0)) = 0.1.
    decay = min(setup["opt"]["ema_decay"], 1 / 10)
    for ema_key, key in (("ema_params", "params"), ("ema_batch_stats", "batch_stats")):
        initial = [a.astype(np.float64) for a in leaves(getattr(state, key))]
        updated = [a.astype(np.float64) for a in leaves(getattr(new_state, key))]
        ema = leaves(getattr(new_state, ema_key))
        assert len(ema) == len(initial) > 0
        for e, a, b in zip(ema, initial, updated):
            np.testing.assert_allclose(e, decay * a + (1 - decay) * b, rtol=1e-5, atol=1e-7)
    # The optimizer applied exactly the first learning rate of the schedule.
    lr = float(setup["metrics"]["lr"])
    assert lr == pytest.approx(optim.scaled_learning_rate(setup["config"]), rel=1e-6)


def test_predict_in_chunks_equals_the_whole_batch(setup):
    model, state = setup["model"], setup["state"]
    variables = state_lib.eval_variables(state, ema=False)
    images = jnp.asarray(setup["batch"]["image"][:8])
    whole = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    chunked = jax.jit(lambda v, x: inference.predict(model, v, x, chunk=2))(variables, images)
    assert chunked.shape == whole.shape
    np.testing.assert_allclose(np.asarray(chunked), np.asarray(whole), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="chunk: must be a positive divisor of the batch size 8, got 3"):
        inference.predict(model, variables, images, chunk=3)


def test_infer_chunk_splits_only_big_batches_on_one_cpu_device():
    per_224 = inference.INFER_CHUNK_SIZE // (224 * 224)
    assert inference.infer_chunk(32, (224, 224), 1.0, "cpu", 1) == per_224
    assert (
        inference.infer_chunk(30, (224, 224), 1.0, "cpu", 1) == 10
    )  # the smallest divisor reaching the size
    assert (
        inference.infer_chunk(32, (224, 224), 0.5, "cpu", 1) == 2 * per_224
    )  # half the activations per image
    assert inference.infer_chunk(32, (96, 96), 0.35, "cpu", 1) == 32  # small activations: the whole batch
    assert inference.infer_chunk(7, (224, 224), 1.0, "cpu", 1) == 7  # a prime batch runs whole
    assert inference.infer_chunk(32, (224, 224), 1.0, "gpu", 1) == 32
    assert inference.infer_chunk(32, (224, 224), 1.0, "cpu", 8) == 32


def test_global_norm_equals_optax_tree_norm():
    rng = np.random.default_rng(0)
    tree = {
        "conv": {"kernel": jnp.asarray(rng.standard_normal((3, 3, 1, 8)), jnp.float32)},
        "bn": [
            jnp.asarray(rng.standard_normal(8), jnp.float32),
            jnp.asarray(rng.standard_normal(5), jnp.bfloat16),
        ],
    }
    f32 = {k: v for k, v in tree.items() if k == "conv"}
    np.testing.assert_allclose(steps.global_norm(f32), optax.tree.norm(f32), rtol=1e-6)
    # bfloat16 leaves are squared in float32 (optax squares them in bfloat16).
    exact = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(tree)))
    np.testing.assert_allclose(steps.global_norm(tree), exact, rtol=1e-6)
    assert not np.isfinite(steps.global_norm({**tree, "nan": jnp.array([np.nan])}))


def test_initial_state_compiled_with_init_options_is_bit_identical(setup):
    assert steps.init_compiler_options("cpu") and steps.init_compiler_options("gpu") == {}
    model, tx = setup["model"], setup["tx"]
    fast = jax.jit(
        lambda: state_lib.create_train_state(model, tx, RES, seed=0),
        compiler_options=steps.init_compiler_options(),
    )()
    for a, b in zip(leaves(setup["state"]), leaves(fast), strict=True):
        np.testing.assert_array_equal(a, b)
