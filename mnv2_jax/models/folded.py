"""MobileNetV2 inference with batch norm folded into the convs: plain JAX functions of folded params.

At inference batch norm is an affine map per channel, so each conv + BN
becomes one conv with a bias (`fold_conv_bn`). The folded network is what
export hands to TFLite (which fuses bias and ReLU6 into its conv ops and
quantizes per channel) and what the memory analysis splits into groups
(`mnv2_jax.tools.memory`); both read the forward pass from here, so it is
written once beside the Flax module it mirrors
(`mnv2_jax.models.mobilenet_v2`: same wiring of the shortcuts, the ReLU6
bottleneck ablation and dilation, read from `mnv2_jax.spec.Architecture`).

Folded parameter tree: `stem`, `head`: `{kernel, bias}`;
`block_{i}`: `{expand (when the block has one), depthwise, project}`, each
`{kernel, bias}`; `classifier`: `{kernel, bias}` when `arch.num_classes`.

A block is three pieces, so that a caller that evaluates the inner channels
in groups (the memory analysis) reuses them:
`block_inner` (expansion and depthwise: act on each inner channel alone),
the projection conv, and `block_output` (projection bias, bottleneck
activation, shortcut). `inverted_residual` composes them.

Convolution implementations are arguments (`mnv2_jax.nn.layers`); the default
`lax` is XLA's own convolution, which the TFLite converter maps to its conv
ops. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mnv2_jax.nn import layers
from mnv2_jax.spec import Architecture, BlockSpec, ConvSpec

# --- Folding -------------------------------------------------------------------------------------


def fold_conv_bn(conv: dict, bn: dict, stats: dict, epsilon: float) -> dict:
    """conv -> BN(x) = scale * (x - mean) / sqrt(var + eps) + bias  ==  conv' + b'.

    Folds in float64 and returns float32 `{kernel, bias}` (NumPy arrays).
    """
    scale = np.asarray(bn["scale"], np.float64) / np.sqrt(np.asarray(stats["var"], np.float64) + epsilon)
    kernel = np.asarray(conv["kernel"], np.float64) * scale  # output channels are the last axis
    bias = np.asarray(bn["bias"], np.float64) - np.asarray(stats["mean"], np.float64) * scale
    return {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}


def fold_variables(arch: Architecture, variables: dict, epsilon: float) -> dict:
    """The folded parameter tree from a module's `params` and `batch_stats` (running statistics)."""
    params, stats = variables["params"], variables["batch_stats"]
    folded: dict[str, Any] = {}
    for name in ("stem", "head"):
        folded[name] = fold_conv_bn(params[name]["conv"], params[name]["bn"], stats[name]["bn"], epsilon)
    for b in arch.blocks:
        units = ("expand", "depthwise", "project") if b.has_expansion else ("depthwise", "project")
        folded[b.name] = {
            u: fold_conv_bn(
                params[b.name][u]["conv"], params[b.name][u]["bn"], stats[b.name][u]["bn"], epsilon
            )
            for u in units
        }
    if arch.num_classes:
        folded["classifier"] = {
            "kernel": np.asarray(params["classifier"]["kernel"], np.float32),
            "bias": np.asarray(params["classifier"]["bias"], np.float32),
        }
    return folded


def fold_batch_norm(module: Any, variables: dict) -> tuple[Callable[[dict, Any], Any], dict]:
    """`(apply_fn, folded_params)` with `apply_fn(folded_params, x)` == the module in eval mode.

    `module` is a `MobileNetV2` (its `arch` and `bn_epsilon` are read); the
    running statistics are used. Dropout is the identity at inference.
    """
    arch: Architecture = module.arch
    return functools.partial(folded_apply, arch), fold_variables(arch, variables, module.bn_epsilon)


# --- The forward pass ----------------------------------------------------------------------------


def stem(x: jax.Array, p: dict, spec: ConvSpec) -> jax.Array:
    """The first 3x3 conv + bias + ReLU6 (XLA's convolution)."""
    return layers.relu6(layers.conv_lax(x, p["kernel"], spec.stride) + p["bias"])


def block_inner(
    x: jax.Array, p: dict, block: BlockSpec, *, depthwise_impl: str = "lax", pointwise_impl: str = "lax"
) -> jax.Array:
    """Expansion (when the block has one) and depthwise conv, each + bias + ReLU6, and the
    'expansion' shortcut around the depthwise: the part that acts on each inner channel alone.

    `p` needs `depthwise` and, when `block.has_expansion`, `expand`; they may
    hold a slice of the inner channels (with `x` sliced too when there is no
    expansion conv).
    """
    if block.has_expansion:
        x = layers.relu6(
            layers.pointwise_conv(x, p["expand"]["kernel"], pointwise_impl) + p["expand"]["bias"]
        )
    expanded = x
    x = layers.depthwise_conv(x, p["depthwise"]["kernel"], block.stride, block.dilation, depthwise_impl)
    x = layers.relu6(x + p["depthwise"]["bias"])
    if block.shortcut == "expansion":
        x = x + expanded
    return x


def block_output(
    projected: jax.Array, bias: jax.Array, block: BlockSpec, inputs: jax.Array | None
) -> jax.Array:
    """After the projection conv: its bias, the bottleneck activation (ReLU6 ablation) and the
    'bottleneck' shortcut from the block's `inputs`."""
    y = projected + bias
    if block.bottleneck_activation == "relu6":
        y = layers.relu6(y)
    if block.shortcut == "bottleneck":
        y = y + inputs
    return y


def inverted_residual(
    x: jax.Array, p: dict, block: BlockSpec, *, depthwise_impl: str = "lax", pointwise_impl: str = "lax"
) -> jax.Array:
    """One folded inverted residual block (Table 1), every tensor whole."""
    inner = block_inner(x, p, block, depthwise_impl=depthwise_impl, pointwise_impl=pointwise_impl)
    projected = layers.pointwise_conv(inner, p["project"]["kernel"], pointwise_impl)
    return block_output(projected, p["project"]["bias"], block, x)


def head_pool(x: jax.Array, p: dict, *, pointwise_impl: str = "lax") -> jax.Array:
    """The last 1x1 conv + bias + ReLU6, then the global average pool (in float32)."""
    y = layers.relu6(layers.pointwise_conv(x, p["kernel"], pointwise_impl) + p["bias"])
    return jnp.mean(y.astype(jnp.float32), axis=(1, 2))


def classifier(x: jax.Array, p: dict) -> jax.Array:
    """The dense classifier on the pooled features; float32 logits."""
    kernel = p["kernel"]
    return (x.astype(kernel.dtype) @ kernel + p["bias"]).astype(jnp.float32)


def folded_apply(
    arch: Architecture, params: dict, x: Any, *, depthwise_impl: str = "lax", pointwise_impl: str = "lax"
) -> Any:
    """The network with batch norm folded: logits, or the pooled features when
    `arch.num_classes == 0`. Computes in the dtype of `x` and `params`."""
    impls = dict(depthwise_impl=depthwise_impl, pointwise_impl=pointwise_impl)
    x = stem(x, params["stem"], arch.stem)
    for b in arch.blocks:
        x = inverted_residual(x, params[b.name], b, **impls)
    x = head_pool(x, params["head"], pointwise_impl=pointwise_impl)
    if arch.num_classes:
        x = classifier(x, params["classifier"])
    return x
