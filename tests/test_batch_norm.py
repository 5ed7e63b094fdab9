"""`mnv2_jax.nn.batch_norm.BatchNorm` against `flax.linen.BatchNorm`: the same variables,
outputs, running statistics and gradients (its backward pass is hand-written)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnv2_jax.nn.batch_norm import BatchNorm

SETTINGS = dict(momentum=0.997, epsilon=1e-3)


def _inputs(dtype=jnp.float32, shape=(4, 5, 6, 8)):
    rng = np.random.default_rng(0)
    # An offset and a spread per channel, so that the mean and the scale both matter.
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3, shape[-1]) + rng.uniform(-2, 2, shape[-1])
    weights = rng.standard_normal(shape)
    return jnp.asarray(x, dtype), jnp.asarray(weights, jnp.float32)


def _variables(x):
    flax_vars = nn.BatchNorm(**SETTINGS).init(jax.random.PRNGKey(0), x, use_running_average=False)
    ours = BatchNorm(**SETTINGS).init(jax.random.PRNGKey(0), x)
    return flax_vars, ours


def _with_params(variables, seed=1):
    # Non-trivial scale, bias and running statistics.
    rng = np.random.default_rng(seed)
    c = variables["params"]["scale"].shape[0]
    return {
        "params": {
            "scale": jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32),
            "bias": jnp.asarray(rng.standard_normal(c), jnp.float32),
        },
        "batch_stats": {
            "mean": jnp.asarray(rng.standard_normal(c), jnp.float32),
            "var": jnp.asarray(rng.uniform(0.5, 2, c), jnp.float32),
        },
    }


def _train_loss(module, variables, x, weights):
    def loss(params, x):
        y, updates = module.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"]
        )
        return jnp.sum(jnp.sin(y.astype(jnp.float32)) * weights), (y, updates["batch_stats"])

    (value, (y, stats)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        variables["params"], x
    )
    return value, y, stats, grads


def _close(a, b, tol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    assert np.linalg.norm(a - b) <= tol * (np.linalg.norm(b) + 1e-30), (np.abs(a - b).max(), np.abs(b).max())


def test_same_variables_as_flax():
    x, _ = _inputs()
    flax_vars, ours = _variables(x)
    assert jax.tree.structure(flax_vars) == jax.tree.structure(ours)
    for a, b in zip(jax.tree.leaves(flax_vars), jax.tree.leaves(ours)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_training_outputs_statistics_and_gradients_match_flax(dtype, tol):
    x, weights = _inputs(dtype)
    variables = _with_params(_variables(x)[1])
    flax_bn = nn.BatchNorm(use_running_average=False, dtype=dtype, **SETTINGS)
    ours = BatchNorm(use_running_average=False, dtype=dtype, **SETTINGS)
    expected = jax.jit(lambda v, x: _train_loss(flax_bn, v, x, weights))(variables, x)
    actual = jax.jit(lambda v, x: _train_loss(ours, v, x, weights))(variables, x)
    (loss_e, y_e, stats_e, (dparams_e, dx_e)), (loss_a, y_a, stats_a, (dparams_a, dx_a)) = expected, actual
    assert y_a.dtype == dtype and dx_a.dtype == dtype
    _close(loss_a, loss_e, tol)
    _close(y_a, y_e, tol)
    for name in ("mean", "var"):
        _close(stats_a[name], stats_e[name], 1e-6 if dtype == jnp.float32 else tol)
    for name in ("scale", "bias"):
        assert dparams_a[name].dtype == jnp.float32
        _close(dparams_a[name], dparams_e[name], tol)
    _close(dx_a, dx_e, tol)


def test_inference_matches_flax():
    x, _ = _inputs()
    variables = _with_params(_variables(x)[1])
    expected = nn.BatchNorm(use_running_average=True, **SETTINGS).apply(variables, x)
    actual = BatchNorm(use_running_average=True, **SETTINGS).apply(variables, x)
    _close(actual, expected, 1e-6)


def test_per_group_statistics_under_vmap_match_flax():
    # bn_group_size vmaps the model over groups of the batch (see `steps.make_train_step`).
    x, weights = _inputs(shape=(3, 4, 5, 5, 8))
    variables = _with_params(_variables(x[0])[1])

    def grouped(module):
        def loss(params, x):
            def one(x):
                y, upd = module.apply(
                    {"params": params, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"]
                )
                return y, upd["batch_stats"]

            y, stats = jax.vmap(one)(x)
            return jnp.sum(jnp.sin(y) * weights), stats

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(variables["params"], x)

    (loss_e, stats_e), grads_e = grouped(nn.BatchNorm(use_running_average=False, **SETTINGS))
    (loss_a, stats_a), grads_a = grouped(BatchNorm(use_running_average=False, **SETTINGS))
    _close(loss_a, loss_e, 1e-5)
    for a, b in zip(jax.tree.leaves((stats_a, grads_a)), jax.tree.leaves((stats_e, grads_e))):
        _close(a, b, 1e-5)
