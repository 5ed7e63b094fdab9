"""The SSDLite head on the MobileNetV2 backbone (`ssdlite_mobilenet_v2` of TF's Object Detection API).

Six feature maps: the expansion of the first 160-channel block (`block_13/expansion`, stride 16),
the 1280-channel `head` conv (stride 32), and four extra layers of depth 512, 256, 256, 128, each
`1x1 conv (depth / 2) -> 3x3 depthwise stride 2 -> 1x1 conv (depth)`, with batch norm and ReLU6 after
each conv; depths are `max(int(depth * width), 16)` (TF's `depth_fn`, plain `int`, not the
backbone's rounding to 8). On each map, unshared box and class predictors: a 3x3 depthwise conv
(batch norm, ReLU6) then a 1x1 conv with bias to `anchors * 4` box codes and `anchors * (classes
+ 1)` class logits (background in column 0). `head_type='ssd'` is the regular SSD head of the
paper's Table 5 for comparison: 3x3 convs instead of the depthwise + 1x1 pairs (extras:
`1x1 -> 3x3 stride 2`; predictors: one 3x3 conv with bias).

Head kernels start from TF's truncated normal with stddev 0.03, biases from zero (`class_prior`, off
by default, starts the class biases at RetinaNet's prior instead: `class_bias_init`). Parameter
names mirror TF's scopes: `extra_{k}/{expand,depthwise,project}` (k = 2..5),
`{box,class}_predictor_{m}/{depthwise,conv}` (m = 0..5); the backbone's names are unchanged
(the module is a `MobileNetV2` with the head added), so ImageNet weights load by name.

Outputs: `{'box_encodings': [B, N, 4], 'class_logits': [B, N, classes + 1]}` in float32, each
map flattened in (y, x, anchor) order and the maps concatenated in order: the anchors of
`mnv2_jax.tasks.detection.anchors` line up row by row.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mnv2_jax.models.mobilenet_v2 import ConvBN, MobileNetV2
from mnv2_jax.nn import layers
from mnv2_jax.tasks.detection import anchors as anchors_lib
from mnv2_jax.tasks.detection.layout import check_head_type, extra_depths, feature_taps

head_init = nn.initializers.truncated_normal(0.03)


def class_bias_init(prior: float, num_slots: int) -> Any:
    """Initial class-predictor biases for the sigmoid logits: `log(prior / (1 - prior))` on every
    foreground slot and its negative on the background slot (column 0 of each anchor's `num_slots`),
    so that each anchor starts out predicting background with probability `1 - prior`.

    This is RetinaNet's prior initialisation (prior 0.01: bias -4.6, TF's `class_prediction_bias_init`
    in its FPN and focal-loss SSD configs). `ssdlite_mobilenet_v2_coco.config` leaves the biases at
    zero, and so does the head unless `class_prior` is set.
    """
    if not 0.0 < prior < 1.0:
        raise ValueError(f"detection.class_prior must be in (0, 1), got {prior}")
    logit = math.log(prior / (1.0 - prior))

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        del key
        per_anchor = jnp.full((num_slots,), logit, dtype).at[0].set(-logit)
        return jnp.tile(per_anchor, shape[0] // num_slots)

    return init


class BiasConv(nn.Module):
    """A k x k conv (TF 'SAME', stride 1) with a bias: the predictors' last layer."""

    features: int
    kernel_size: int = 1
    dtype: Any = jnp.float32
    pointwise_impl: str = "auto"
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", head_init, (k, k, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if k == 1:
            y = layers.pointwise_conv(x, kernel, self.pointwise_impl)
        else:
            y = layers.full_conv(x, kernel, 1, 1, self.pointwise_impl)
        return y + bias.astype(self.dtype)


class ExtraLayer(nn.Module):
    """One extra feature map: 1x1 to `mid`, then 3x3 depthwise stride 2 and 1x1 to `out` (SSDLite)
    or one 3x3 stride-2 conv to `out` (SSD)."""

    mid: int
    out: int
    lite: bool
    unit: Any  # functools.partial(ConvBN, ...) with the shared settings

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = self.unit(self.mid, name="expand")(x, train)
        if not self.lite:
            return self.unit(self.out, 3, 2, name="conv")(x, train)
        x = self.unit(self.mid, 3, 2, depthwise=True, name="depthwise")(x, train)
        return self.unit(self.out, name="project")(x, train)


class Predictor(nn.Module):
    """`outputs` values per location: 3x3 depthwise (batch norm, ReLU6) then a 1x1 conv with bias
    (SSDLite), or one 3x3 conv with bias (SSD)."""

    outputs: int
    lite: bool
    unit: Any
    dtype: Any = jnp.float32
    pointwise_impl: str = "auto"
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.lite:
            x = self.unit(x.shape[-1], 3, depthwise=True, name="depthwise")(x, train)
        kernel_size = 1 if self.lite else 3
        conv = BiasConv(
            self.outputs, kernel_size, self.dtype, self.pointwise_impl, self.bias_init, name="conv"
        )
        return conv(x)


class SSDLite(MobileNetV2):
    """MobileNetV2 (`arch` with `num_classes=0`) with the SSDLite (or regular SSD) head."""

    num_slots: int = 81  # classes + background
    head_type: str = "ssdlite"
    class_prior: float | None = None  # None: zero class biases (TF); else see `class_bias_init`

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        check_head_type(self.head_type)
        if self.arch.num_classes:
            raise ValueError("arch: the detector's backbone has no classifier; build it with num_classes=0")
        anchors_lib.feature_map_sizes(x.shape[1])  # a clear error for inputs too small for six maps
        taps = feature_taps(self.arch)
        _, found = super().__call__(x, train, taps=taps)
        unit = functools.partial(
            ConvBN,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            bn_axis_name=self.bn_axis_name,
            bn_axis_index_groups=self.bn_axis_index_groups,
            dtype=self.dtype,
            depthwise_impl=self.depthwise_impl,
            pointwise_impl=self.pointwise_impl,
            kernel_init=head_init,
        )
        lite = self.head_type == "ssdlite"
        maps = [found[taps[0]], found[taps[1]]]
        for k, (mid, out) in enumerate(extra_depths(self.arch.width), start=2):
            maps.append(ExtraLayer(mid, out, lite, unit, name=f"extra_{k}")(maps[-1], train))

        boxes, logits = [], []
        for m, (feature, per_location) in enumerate(zip(maps, anchors_lib.anchors_per_location())):
            for kind, size, found_outputs in (("box", 4, boxes), ("class", self.num_slots, logits)):
                bias_init = nn.initializers.zeros
                if kind == "class" and self.class_prior is not None:
                    bias_init = class_bias_init(self.class_prior, self.num_slots)
                predictor = Predictor(
                    per_location * size,
                    lite,
                    unit,
                    self.dtype,
                    self.pointwise_impl,
                    bias_init,
                    name=f"{kind}_predictor_{m}",
                )
                y = predictor(feature, train)
                found_outputs.append(y.astype(jnp.float32).reshape(y.shape[0], -1, size))
        return {
            "box_encodings": jnp.concatenate(boxes, axis=1),
            "class_logits": jnp.concatenate(logits, axis=1),
        }
