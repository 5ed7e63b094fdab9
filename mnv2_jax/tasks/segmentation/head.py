"""Mobile DeepLabv3 (the paper's Section 6.3, Table 7): a DeepLabv3 head on MobileNetV2's `block_16`.

The system is TF DeepLab's `mobilenet_v2` model (`research/deeplab/model.py`): the backbone runs at
output stride 16 or 8 (atrous depthwise convs past that stride, `spec.build_architecture`) and stops
at its last block, the 320-channel linear projection (TF-Slim's `layer_18`); the 1280-channel conv
is never built. On that feature map:

* image pooling: the global mean -> 1x1 conv to `depth` -> BN -> ReLU, broadcast back over the map
  (TF upsamples the 1x1 map bilinearly, which is a broadcast);
* `aspp0`: 1x1 conv to `depth` -> BN -> ReLU;
* optional ASPP (`aspp=True`): three 3x3 atrous convs to `depth` at rates (6, 12, 18) x 16 / OS
  (6/12/18 at OS16, 12/24/36 at OS8), regular convs by default (Table 7's 4.52M parameters) or TF's
  separable variant (`aspp_separable`: depthwise at the rate -> BN -> ReLU -> 1x1 -> BN -> ReLU);
* concat -> 1x1 `concat_projection` to `depth` -> BN -> ReLU -> dropout 0.1 -> 1x1 `logits` with a
  bias (no BN, no activation);
* the logits, at stride OS, upsampled bilinearly with `align_corners=True` to the input size
  (`resize_bilinear_align_corners`), as DeepLab does before its loss and its argmax.

The head uses plain ReLU and batch norm with decay 0.9997 and epsilon 1e-5 (DeepLab's
`aspp_with_batch_norm` scope); the backbone keeps its own (0.997, 1e-3). Parameters: the backbone's
at the top level (`stem`, `block_{i}`: the same names as a classification run, so `init_from` an
ImageNet run or an imported Keras model copies them), the head's under `image_pooling`, `aspp0`,
`aspp{1,2,3}`, `concat_projection`, `logits`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mnv2_jax.models.mobilenet_v2 import ConvBN, MobileNetV2
from mnv2_jax.spec import Architecture

# TF DeepLab's atrous rates at output stride 16; they scale with 16 / output_stride.
ASPP_RATES_AT_OS16 = (6, 12, 18)
HEAD_BN_MOMENTUM = 0.9997
HEAD_BN_EPSILON = 1e-5


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    """The ASPP branches' dilation rates: (6, 12, 18) at OS16, (12, 24, 36) at OS8, (3, 6, 9) at OS32."""
    return tuple(r * 16 // output_stride for r in ASPP_RATES_AT_OS16)


def stop_batch_norm_gradients(params: Any) -> Any:
    """`params` with every batch-norm scale and offset (leaves under a `bn` module) behind
    `stop_gradient`: their gradients are 0, so the optimizer leaves them as they are."""

    def stop(path, leaf):
        names = [getattr(key, "key", "") for key in path]
        return jax.lax.stop_gradient(leaf) if "bn" in names else leaf

    return jax.tree_util.tree_map_with_path(stop, params)


def frozen_batch_norm(module: type[nn.Module], initializing: bool) -> type[nn.Module]:
    """`module` whose batch-norm parameters get no gradients (the parameter tree is unchanged)."""
    return nn.map_variables(module, "params", trans_in_fn=stop_batch_norm_gradients, init=initializing)


def feature_endpoint(arch: Architecture) -> str:
    """The feature the head reads: the backbone's last block (`block_16` in the paper's network)."""
    return arch.blocks[-1].name


def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """`(out_size, in_size)` weights of TF's `resize_bilinear(align_corners=True)` along one axis.

    Output pixel i samples the input at i * (in - 1) / (out - 1) (corner pixels on corner pixels),
    mixing the two neighbours linearly; computed as TF computes it, in float32.
    """
    scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0.0)
    position = np.arange(out_size, dtype=np.float32) * scale
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, in_size - 1)
    frac = position - low.astype(np.float32)
    weights = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, low), 1.0 - frac)
    np.add.at(weights, (rows, high), frac)
    return weights


def resize_bilinear_align_corners(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """NHWC `x` resized to `size` (height, width) like `tf.compat.v1.image.resize_bilinear(x, size,
    align_corners=True)`.

    `jax.image.resize` samples at half-pixel centres, which is TF2's convention, not DeepLab's. Here
    each axis is one small matrix product with static interpolation weights, which XLA runs as a
    dot on every backend (and differentiates exactly).
    """
    height, width = int(size[0]), int(size[1])
    wy = jnp.asarray(interpolation_matrix(x.shape[1], height))
    wx = jnp.asarray(interpolation_matrix(x.shape[2], width))
    highest = jax.lax.Precision.HIGHEST
    x = jnp.einsum("nhwc,xw->nhxc", x, wx.astype(x.dtype), precision=highest)
    return jnp.einsum("yh,nhxc->nyxc", wy.astype(x.dtype), x, precision=highest)


def scaled_size(size: int, scale: float) -> int:
    """DeepLab's image size at an eval scale: int((size - 1) * scale + 1) (513 -> 257, 385, ..., 897),
    so that the corners stay aligned."""
    return int((size - 1) * scale + 1)


def predict_probabilities(
    model: nn.Module, variables: dict, images: jax.Array, scales: Sequence[float] = (1.0,), flip: bool = False
) -> jax.Array:
    """Class probabilities (N, H, W, C) averaged over the eval scales (and left-right flips): TF
    DeepLab's `predict_labels_multi_scale`. Each scaled image (bilinear, align_corners) goes
    through the model, its logits are resized to (H, W), and the softmaxes are averaged."""
    height, width = images.shape[1:3]
    total, count = 0.0, 0
    for scale in scales:
        x = images
        if scale != 1.0:
            x = resize_bilinear_align_corners(images, (scaled_size(height, scale), scaled_size(width, scale)))
        for flipped in (False, True) if flip else (False,):
            logits = model.apply(
                variables, x[:, :, ::-1] if flipped else x, train=False, output_size=(height, width)
            )
            probabilities = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
            total = total + (probabilities[:, :, ::-1] if flipped else probabilities)
            count += 1
    return total / count


class DeepLabV3Head(nn.Module):
    """Image pooling + 1x1 (+ ASPP) -> projection -> dropout -> logits, at the feature map's stride."""

    num_classes: int
    output_stride: int
    aspp: bool = False
    aspp_separable: bool = False
    depth: int = 256
    dropout_rate: float = 0.1
    bn_momentum: float = HEAD_BN_MOMENTUM
    bn_epsilon: float = HEAD_BN_EPSILON
    bn_axis_name: str | None = None
    bn_axis_index_groups: Any = None
    dtype: Any = jnp.float32
    depthwise_impl: str = "auto"
    pointwise_impl: str = "auto"

    @nn.compact
    def __call__(self, features: jax.Array, train: bool, bn_train: bool | None = None) -> jax.Array:
        """Logits at the feature map's size. `train` turns dropout on; batch norm uses batch
        statistics when `bn_train` (default: `train`)."""
        bn_train = train if bn_train is None else bn_train
        unit = functools.partial(
            ConvBN,
            relu6=False,  # plain ReLU, applied below
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            bn_axis_name=self.bn_axis_name,
            bn_axis_index_groups=self.bn_axis_index_groups,
            dtype=self.dtype,
            depthwise_impl=self.depthwise_impl,
            pointwise_impl=self.pointwise_impl,
        )
        height, width = features.shape[1:3]
        pooled = jnp.mean(features.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(self.dtype)
        pooled = nn.relu(unit(self.depth, name="image_pooling")(pooled, bn_train))
        branches = [
            jnp.broadcast_to(pooled, (pooled.shape[0], height, width, self.depth)),
            nn.relu(unit(self.depth, name="aspp0")(features, bn_train)),
        ]
        if self.aspp:
            for i, rate in enumerate(aspp_rates(self.output_stride), start=1):
                if self.aspp_separable:
                    x = nn.relu(
                        unit(features.shape[-1], 3, dilation=rate, depthwise=True, name=f"aspp{i}_depthwise")(
                            features, bn_train
                        )
                    )
                    branches.append(nn.relu(unit(self.depth, name=f"aspp{i}_pointwise")(x, bn_train)))
                else:
                    branches.append(
                        nn.relu(unit(self.depth, 3, dilation=rate, name=f"aspp{i}")(features, bn_train))
                    )
        x = jnp.concatenate(branches, axis=-1)
        x = nn.relu(unit(self.depth, name="concat_projection")(x, bn_train))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = nn.Conv(
            self.num_classes,
            (1, 1),
            use_bias=True,
            dtype=self.dtype,
            kernel_init=nn.initializers.truncated_normal(0.01),
            name="logits",
        )(x)
        return logits.astype(jnp.float32)


class MobileDeepLabV3(nn.Module):
    """MobileNetV2 up to its last block at `arch.output_stride`, the DeepLabv3 head, and the
    bilinear upsampling of the logits to the input size: images (N, H, W, 3) in [-1, 1] ->
    logits (N, H, W, num_classes).

    `fine_tune_bn=False` runs every batch norm on its moving statistics in training too (DeepLab's
    `fine_tune_batch_norm=False`, for batches too small for batch statistics) and keeps batch norm's
    scale and offset fixed (their gradients are 0; TF-Slim would still train them); dropout still
    trains.
    """

    arch: Architecture  # num_classes 0, output_stride set
    num_classes: int
    aspp: bool = False
    aspp_separable: bool = False
    depth: int = 256
    dropout_rate: float = 0.1
    fine_tune_bn: bool = True
    head_bn_momentum: float = HEAD_BN_MOMENTUM
    head_bn_epsilon: float = HEAD_BN_EPSILON
    bn_momentum: float = 0.997
    bn_epsilon: float = 1e-3
    bn_axis_name: str | None = None
    bn_axis_index_groups: Sequence[Sequence[int]] | None = None
    dtype: Any = jnp.float32
    depthwise_impl: str = "auto"
    pointwise_impl: str = "auto"

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, output_size: Sequence[int] | None = None
    ) -> jax.Array:
        """Logits upsampled to the input size, or to `output_size` (height, width): multi-scale
        evaluation resizes a scaled image's logits straight to the original size, as DeepLab does."""
        if self.arch.output_stride is None:
            raise ValueError("arch.output_stride: the segmentation head needs 8, 16 or 32, got None")
        shared = dict(
            bn_axis_name=self.bn_axis_name,
            bn_axis_index_groups=self.bn_axis_index_groups,
            dtype=self.dtype,
            depthwise_impl=self.depthwise_impl,
            pointwise_impl=self.pointwise_impl,
        )
        bn_train = train and self.fine_tune_bn
        tap = feature_endpoint(self.arch)
        backbone_cls, head_cls = MobileNetV2, DeepLabV3Head
        if not self.fine_tune_bn:
            backbone_cls = frozen_batch_norm(MobileNetV2, self.is_initializing())
            head_cls = frozen_batch_norm(DeepLabV3Head, self.is_initializing())
        backbone = backbone_cls(
            self.arch,
            bn_momentum=self.bn_momentum,
            bn_epsilon=self.bn_epsilon,
            final_endpoint=tap,
            **shared,
        )
        nn.share_scope(self, backbone)  # backbone parameters at the top level, as in classification
        features = backbone(x, train=bn_train)
        head = head_cls(
            self.num_classes,
            self.arch.output_stride,
            aspp=self.aspp,
            aspp_separable=self.aspp_separable,
            depth=self.depth,
            dropout_rate=self.dropout_rate,
            bn_momentum=self.head_bn_momentum,
            bn_epsilon=self.head_bn_epsilon,
            **shared,
        )
        nn.share_scope(self, head)
        logits = head(features, train, bn_train)
        return resize_bilinear_align_corners(logits, x.shape[1:3] if output_size is None else output_size)
