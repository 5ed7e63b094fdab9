"""The batch-norm-folded forward pass (`mnv2_jax.models.folded`) against the Flax module in
inference mode, on the shared tiny network with trained-style batch norm (random statistics, so
no layer's batch norm is the identity): logits, pooled features without a classifier, the
backend's fast kernels, and an ablation wiring (expansion shortcut, ReLU6 bottleneck, atrous).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from conftest import TINY_RESOLUTION, random_variables

from mnv2_jax.models import folded

REL_TOL = 1e-5  # relative to the output's largest magnitude, float32


def _relative_error(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def _folded(arch, params, x, **impls):
    with jax.default_matmul_precision("highest"):  # full float32 on every backend (GPUs default to TF32)
        return jax.jit(lambda p, x: folded.folded_apply(arch, p, x, **impls))(params, x)


def test_folded_forward_equals_the_module(tiny):
    apply_fn, params = folded.fold_batch_norm(tiny.model, tiny.variables)
    params = jax.tree.map(jnp.asarray, params)
    arch = tiny.model.arch
    logits, features = tiny.features()
    assert _relative_error(jax.jit(apply_fn)(params, tiny.x), logits) < REL_TOL
    # The backend's default kernels (shifted depthwise and dot 1x1 on CPU) compute the same function.
    assert (
        _relative_error(_folded(arch, params, tiny.x, depthwise_impl="auto", pointwise_impl="auto"), logits)
        < REL_TOL
    )
    # Without a classifier the folded network returns the pooled features.
    headless = dataclasses.replace(arch, num_classes=0)
    without_classifier = {k: v for k, v in params.items() if k != "classifier"}
    pooled = _folded(headless, without_classifier, tiny.x)
    assert pooled.shape == features["pre_logits"].shape
    assert _relative_error(pooled, features["pre_logits"]) < REL_TOL


def test_folded_forward_follows_the_ablation_wiring(tiny):
    model = tiny.variant(residual="expansion", bottleneck_activation="relu6", output_stride=8)
    assert any(b.shortcut == "expansion" for b in model.arch.blocks)
    assert any(b.dilation > 1 for b in model.arch.blocks)
    variables = random_variables(model, TINY_RESOLUTION, seed=1)
    logits, _ = tiny.features(model, variables)
    _, params = folded.fold_batch_norm(model, variables)
    assert _relative_error(_folded(model.arch, jax.tree.map(jnp.asarray, params), tiny.x), logits) < REL_TOL
