"""Batch norm with a hand-written backward pass, a drop-in for `flax.linen.BatchNorm`.

Same variables (`params/{scale,bias}`, `batch_stats/{mean,var}`), the same
statistics (float32, variance as E[x^2] - E[x]^2 clipped at 0, as Flax's
default) and the same running-average update, so checkpoints and the Keras
importer do not see a difference. Only the gradient is written out: the
textbook form

    dx = scale * rstd * (g - mean(g) - x_hat * mean(g * x_hat))

needs two reductions over the batch (sum g, sum g * (x - mean)), where
differentiating Flax's forward pass gives three and materialises one more
full-size product, which makes the CPU train step 5-9% faster (measured in
the top-level README's benchmarks).

With `bn_axis_name` (statistics across the devices of a `pmap`/`shard_map`)
the model uses Flax's own module: a cross-device mean inside a custom gradient
is not worth owning for a path this code base does not take (data parallelism
here is SPMD `jit`, where the batch mean is already global).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any


def _moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance in float32 over all but the last axis."""
    axes = tuple(range(x.ndim - 1))
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = jnp.mean(xf, axis=axes)
    mean_of_squares = jnp.mean(jnp.square(xf), axis=axes)
    return mean, jnp.maximum(mean_of_squares - jnp.square(mean), 0.0)


def _normalize(x, mean, var, scale, bias, epsilon):
    rstd = lax.rsqrt(var + epsilon)
    return (x.astype(mean.dtype) - mean) * (rstd * scale) + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode batch norm over all but the last axis: (y in float32, batch mean, batch var)."""
    return _train_fwd(x, scale, bias, epsilon)[0]


def _train_fwd(x, scale, bias, epsilon):
    mean, var = _moments(x)
    y = _normalize(x, mean, var, scale, bias, epsilon)
    return (y, mean, var), (x, mean, lax.rsqrt(var + epsilon), scale)


def _train_bwd(epsilon, residuals, cotangents):
    del epsilon
    x, mean, rstd, scale = residuals
    g, g_mean, g_var = cotangents
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    g = g.astype(mean.dtype)
    centered = x.astype(mean.dtype) - mean
    sum_g = jnp.sum(g, axis=axes)
    sum_g_centered = jnp.sum(g * centered, axis=axes)
    k = scale * rstd
    dx = k * g - k * sum_g / n - centered * (k * sum_g_centered * jnp.square(rstd) / n)
    # The batch statistics are outputs too (they feed the running averages);
    # their cotangents are zero in training, but the rule stays exact.
    dx = dx + g_mean / n + centered * (2.0 * g_var / n)
    return dx.astype(x.dtype), (sum_g_centered * rstd).astype(scale.dtype), sum_g.astype(scale.dtype)


batch_norm_train.defvjp(_train_fwd, _train_bwd)


class BatchNorm(nn.Module):
    """`flax.linen.BatchNorm` over the last axis (scale and bias on, no `axis_name`),
    with `batch_norm_train`'s gradient; outputs in `dtype`."""

    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        if self.use_running_average:
            y = _normalize(x, running_mean.value, running_var.value, scale, bias, self.epsilon)
            return y.astype(self.dtype)
        y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
            running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
        return y.astype(self.dtype)
