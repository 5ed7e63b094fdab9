"""MobileNetV2 in Flax Linen, built from the architecture spec (`mnv2_jax.spec`).

The module knows nothing of training. `MobileNetV2(arch).apply(variables, x,
train=False)` maps NHWC images in [-1, 1] to logits; `return_features=True`
also returns every named intermediate tensor (`stem`, `block_{i}`,
`block_{i}/expansion`, `head`, `pre_logits`) for detection and segmentation
heads. Batch norm follows every conv, with TF-Slim MobileNet's decay 0.997 and
epsilon 1e-3. Parameters are float32; `dtype=jnp.bfloat16` computes in bf16.

Parameter tree (names shared with the accounting, the optimizer's weight
decay mask and the Keras importer): `stem/{conv,bn}`, `block_{i}/expand/...`,
`block_{i}/depthwise/{conv,bn}` (kernel (3, 3, 1, C)), `block_{i}/project/...`,
`head/{conv,bn}`, `classifier/{kernel,bias}`.

`final_endpoint` builds the network only up to a named feature (TF-Slim's
`mobilenet_base(final_endpoint=...)`): a segmentation head on `block_16` has no
1280-channel `head` conv, in its parameters or its multiply-adds.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnv2_jax.nn import layers
from mnv2_jax.nn.batch_norm import BatchNorm
from mnv2_jax.spec import Architecture, BlockSpec, build_architecture, tap_names

Dtype = Any
_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


class Conv(nn.Module):
    """A bias-free conv with TF 'SAME' padding; the implementation is chosen per backend."""

    features: int
    kernel_size: int = 1
    stride: int = 1
    dilation: int = 1
    depthwise: bool = False
    dtype: Dtype = jnp.float32
    depthwise_impl: str = "auto"
    pointwise_impl: str = "auto"
    kernel_init: Any = _conv_init  # task heads use their own systems' initialisers

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        in_features = 1 if self.depthwise else x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (k, k, in_features, self.features), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if self.depthwise:
            return layers.depthwise_conv(x, kernel, self.stride, self.dilation, self.depthwise_impl)
        if k == 1 and self.stride == 1:
            return layers.pointwise_conv(x, kernel, self.pointwise_impl)
        return layers.full_conv(x, kernel, self.stride, self.dilation, self.pointwise_impl)


class ConvBN(nn.Module):
    """Conv -> batch norm -> optional ReLU6: the unit every layer of the paper uses."""

    features: int
    kernel_size: int = 1
    stride: int = 1
    dilation: int = 1
    depthwise: bool = False
    relu6: bool = True
    bn_momentum: float = 0.997
    bn_epsilon: float = 1e-3
    bn_axis_name: str | None = None
    bn_axis_index_groups: Any = None
    dtype: Dtype = jnp.float32
    depthwise_impl: str = "auto"
    pointwise_impl: str = "auto"
    kernel_init: Any = _conv_init

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = Conv(
            self.features,
            self.kernel_size,
            self.stride,
            self.dilation,
            self.depthwise,
            self.dtype,
            self.depthwise_impl,
            self.pointwise_impl,
            self.kernel_init,
            name="conv",
        )(x)
        bn = dict(use_running_average=not train, momentum=self.bn_momentum, epsilon=self.bn_epsilon)
        if self.bn_axis_name is None:
            x = BatchNorm(**bn, dtype=self.dtype, name="bn")(x)
        else:  # statistics across named devices: Flax's module (see `mnv2_jax.nn.batch_norm`)
            x = nn.BatchNorm(
                **bn,
                dtype=self.dtype,
                axis_name=self.bn_axis_name,
                axis_index_groups=self.bn_axis_index_groups,
                name="bn",
            )(x)
        return layers.relu6(x) if self.relu6 else x


class InvertedResidual(nn.Module):
    """Table 1: 1x1 expand + ReLU6 -> 3x3 depthwise + ReLU6 -> 1x1 linear projection.

    The shortcut follows `block.shortcut` (see `mnv2_jax.spec` for the wiring
    of the 'expansion' ablation).
    """

    block: BlockSpec
    unit: Any  # functools.partial(ConvBN, ...) with the shared settings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, features: dict | None = None) -> jax.Array:
        b = self.block
        inputs = x
        if b.has_expansion:
            x = self.unit(b.expanded_channels, name="expand")(x, train)
            if features is not None:
                features[f"{b.name}/expansion"] = x
        expanded = x
        x = self.unit(b.expanded_channels, 3, b.stride, b.dilation, depthwise=True, name="depthwise")(
            x, train
        )
        if b.shortcut == "expansion":
            x = x + expanded
        relu6 = b.bottleneck_activation == "relu6"
        x = self.unit(b.out_channels, relu6=relu6, name="project")(x, train)
        if b.shortcut == "bottleneck":
            x = x + inputs
        return x


class MobileNetV2(nn.Module):
    """The MobileNetV2 family: any architecture that `build_architecture` derives."""

    arch: Architecture
    dropout_rate: float = 0.2
    bn_momentum: float = 0.997
    bn_epsilon: float = 1e-3
    bn_axis_name: str | None = None
    bn_axis_index_groups: Sequence[Sequence[int]] | None = None
    dtype: Dtype = jnp.float32
    depthwise_impl: str = "auto"
    pointwise_impl: str = "auto"
    # None: the whole network. Else the last layer built: 'stem', 'block_{i}' or 'head'; the call
    # then returns that feature (with `taps`: `(feature, {name: tensor})`).
    final_endpoint: str | None = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        train: bool = False,
        return_features: bool = False,
        taps: Sequence[str] | None = None,
    ):
        """Logits (or pooled features when `arch.num_classes` is 0, or the `final_endpoint` feature).

        `return_features=True` also returns every named intermediate tensor; `taps` returns
        `(logits, {name: tensor})` for just the named ones (`spec.tap_names(arch)` lists them:
        `stem`, `block_{i}`, `block_{i}/expansion`, `head`, `pre_logits`), which is what a task
        head reads.
        """
        if self.final_endpoint is not None and self.final_endpoint not in endpoint_names(self.arch):
            raise ValueError(
                f"final_endpoint: must be None or one of {', '.join(endpoint_names(self.arch))}, "
                f"got {self.final_endpoint!r}"
            )
        known = computed_features(self.arch, self.final_endpoint)
        if taps is not None:
            unknown = sorted(set(taps) - set(known))
            if unknown:
                raise ValueError(f"taps: unknown feature {unknown}; known: {', '.join(known)}")
            return_features = True
        layers.resolve_impl("depthwise", self.depthwise_impl)  # fail early on a bad name
        layers.resolve_impl("pointwise", self.pointwise_impl)
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"inputs: expected NHWC images with 3 channels, got shape {x.shape}")
        unit = functools.partial(
            ConvBN,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            bn_axis_name=self.bn_axis_name,
            bn_axis_index_groups=self.bn_axis_index_groups,
            dtype=self.dtype,
            depthwise_impl=self.depthwise_impl,
            pointwise_impl=self.pointwise_impl,
        )
        features: dict[str, jax.Array] | None = {} if return_features else None
        arch = self.arch

        def finish(x: jax.Array):
            if taps is not None:
                return x, {name: features[name] for name in taps}
            return (x, features) if return_features else x

        x = unit(arch.stem.out_channels, arch.stem.kernel, arch.stem.stride, name="stem")(x, train)
        if features is not None:
            features["stem"] = x
        if self.final_endpoint == "stem":
            return finish(x)
        for block in arch.blocks:
            x = InvertedResidual(block, unit, name=block.name)(x, train, features)
            if features is not None:
                features[block.name] = x
            if self.final_endpoint == block.name:
                return finish(x)
        x = unit(arch.head.out_channels, name="head")(x, train)
        if features is not None:
            features["head"] = x
        if self.final_endpoint == "head":
            return finish(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if features is not None:
            features["pre_logits"] = x
        if arch.num_classes:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = nn.Dense(
                arch.num_classes,
                dtype=self.dtype,
                kernel_init=nn.initializers.normal(0.01),
                name="classifier",
            )(x)
            x = x.astype(jnp.float32)
        return finish(x)


def endpoint_names(arch: Architecture) -> tuple[str, ...]:
    """Where a `MobileNetV2(arch, final_endpoint=...)` may stop: 'stem', 'block_{i}', 'head'."""
    return ("stem", *(block.name for block in arch.blocks), "head")


def computed_features(arch: Architecture, final_endpoint: str | None = None) -> tuple[str, ...]:
    """The features a `MobileNetV2(arch, final_endpoint=...)` computes (its possible `taps`), in
    network order."""
    names = tap_names(arch)
    return names if final_endpoint is None else names[: names.index(final_endpoint) + 1]


def create_model(
    width: float = 1.0,
    expansion: float | Sequence[float] = 6,
    bottleneck_activation: str = "linear",
    residual: str = "bottleneck",
    output_stride: int | None = None,
    num_classes: int = 1000,
    max_repeats: int | None = None,
    **module_kwargs: Any,
) -> MobileNetV2:
    """A `MobileNetV2` module from the sweep settings (see `build_architecture`)."""
    arch = build_architecture(
        width=width,
        expansion=expansion,
        bottleneck_activation=bottleneck_activation,
        residual=residual,
        output_stride=output_stride,
        num_classes=num_classes,
        max_repeats=max_repeats,
    )
    return MobileNetV2(arch, **module_kwargs)


def init_variables(model: MobileNetV2, resolution: int, seed: int = 0) -> dict:
    """Initialise parameters and batch statistics for `resolution` x `resolution` inputs."""
    from mnv2_jax.spec import validate

    validate(width=model.arch.width, resolution=resolution)
    x = jnp.zeros((1, resolution, resolution, 3), jnp.float32)
    return jax.jit(lambda rng: model.init(rng, x, train=False))(jax.random.PRNGKey(seed))
