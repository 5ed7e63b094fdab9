"""Semantic segmentation: Mobile DeepLabv3 on MobileNetV2 (the paper's Section 6.3, Table 7).

Head: DeepLabv3 on the backbone's last block at `output_stride` 8 or 16 (or 32), image pooling +
1x1 (+ ASPP with `segmentation.aspp`), logits upsampled to the input size (`head.py`). Input: any
TFDS dataset with a per-pixel `segmentation_mask` -- `mnist_seg_offline` (offline, ships with the
dependencies) or `voc2012_seg_aug` (PASCAL VOC 2012 + SBD, downloaded by hand) -- with DeepLab's
random scale, crop and flip (`input.py`). Loss: per-pixel softmax cross entropy, 255 ignored
(`loss.py`). Eval: mIOU and per-class IOU from one split-wide confusion matrix (`evaluator.py`),
single scale or averaged over `segmentation.eval_scales` and flips (`head.predict_probabilities`).

Config keys read besides the common ones: `output_stride`, `segmentation.{crop_size, aspp,
aspp_separable, depth, dropout_rate, bn_momentum, bn_epsilon, fine_tune_bn, min_scale, max_scale,
scale_step, eval_scales, eval_flip}`; `resolution` is the size eval images are padded to (and the counted input size), the
train crop `segmentation.crop_size` (default: `resolution`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from mnv2_jax import accounting
from mnv2_jax import config as config_lib
from mnv2_jax.tasks.base import Batch, Task

SEGMENTATION_OUTPUT_STRIDES = (8, 16, 32)


def check_config(config: Any) -> None:
    """ValueErrors naming the key for settings the segmentation task cannot run."""
    if config.get("output_stride", None) not in SEGMENTATION_OUTPUT_STRIDES:
        raise ValueError(
            f"config key 'output_stride': the segmentation task needs one of {SEGMENTATION_OUTPUT_STRIDES} "
            f"(DeepLab: 16, or 8 for the denser maps), got {config.get('output_stride', None)!r}"
        )
    seg = config.get("segmentation", None) or {}
    depth = seg.get("depth", 256)
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"config key 'segmentation.depth': must be an integer >= 1, got {depth!r}")
    scales = seg.get("eval_scales", (1.0,))
    if not scales or not all(isinstance(s, (int, float)) and s > 0 for s in scales):
        raise ValueError(
            f"config key 'segmentation.eval_scales': must be one or more numbers > 0, got {scales!r}"
        )
    rate = seg.get("dropout_rate", 0.1)
    if not 0 <= rate < 1:
        raise ValueError(f"config key 'segmentation.dropout_rate': must be in [0, 1), got {rate!r}")


class SegmentationTask(Task):
    name = "segmentation"
    train_metrics = ("pixel_acc",)
    main_metric = "eval/miou"

    def __init__(self, config: Any):
        check_config(config)
        super().__init__(config)

    @functools.cached_property
    def _metadata(self) -> dict[str, Any]:
        from mnv2_jax.data import input_pipeline
        from mnv2_jax.tasks.segmentation import input as input_lib

        builder = input_pipeline._builder(input_pipeline.InputConfig.from_config(self.config))
        return input_lib.dataset_metadata(builder)

    def dataset_info(self) -> Any:
        from mnv2_jax.tasks.segmentation import input as input_lib

        return input_lib.dataset_info(self.config)

    def train_iterator(self, start_step: int = 0) -> Iterator[Batch]:
        from mnv2_jax.tasks.segmentation import input as input_lib

        input_lib.warn_small_bn_batch(self.config)
        return input_lib.train_iterator(self.config, start_step)

    def eval_iterator(self) -> Iterator[Batch]:
        from mnv2_jax.tasks.segmentation import input as input_lib

        return input_lib.eval_iterator(self.config)

    def model(self, num_classes: int, **overrides: Any) -> Any:
        return model_from_config(self.config, num_classes, **overrides)

    def count(self, num_classes: int) -> dict[str, int]:
        seg = self.config.segmentation
        arch = config_lib.architecture_from_config(self.config, 0)
        summary = accounting.deeplab_summary(
            arch, self.config.resolution, num_classes, seg.aspp, seg.aspp_separable, seg.depth
        )
        return {key: summary[key] for key in ("madds", "params", "params_bn", "params_total")}

    def loss(self, outputs: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        from mnv2_jax.tasks.segmentation import loss as loss_lib

        return loss_lib.train_loss(outputs, batch["label"])

    def eval_outputs(self, model: Any, variables: dict, batch: dict[str, Any]) -> Any:
        import jax.numpy as jnp

        from mnv2_jax.tasks.segmentation import loss as loss_lib
        from mnv2_jax.tasks.segmentation.head import predict_probabilities

        seg = self.config.segmentation
        scales, flip = tuple(seg.get("eval_scales", (1.0,))), bool(seg.get("eval_flip", False))
        if scales == (1.0,) and not flip:
            logits = model.apply(variables, batch["image"], train=False)
        else:  # the averaged probabilities' logarithm: a softmax of it gives them back
            probabilities = predict_probabilities(model, variables, batch["image"], scales, flip)
            logits = jnp.log(jnp.maximum(probabilities, 1e-30))
        mask = batch.get("mask", jnp.ones(logits.shape[:1], jnp.float32))
        return loss_lib.eval_sums(logits, batch["label"], mask)

    def evaluator(self) -> Any:
        from mnv2_jax.tasks.segmentation.evaluator import SegmentationEvaluator

        return SegmentationEvaluator(self._num_classes, self._metadata.get("class_names"))

    @functools.cached_property
    def _num_classes(self) -> int:
        return self.config.num_classes or self.dataset_info().num_classes


def model_from_config(config: Any, num_classes: int, **overrides: Any):
    """The Flax module a segmentation config trains (`overrides` replace module fields)."""
    import jax.numpy as jnp

    from mnv2_jax.tasks.segmentation.head import MobileDeepLabV3

    seg = config.segmentation
    kwargs = dict(
        aspp=seg.aspp,
        aspp_separable=seg.aspp_separable,
        depth=seg.depth,
        dropout_rate=seg.dropout_rate,
        fine_tune_bn=seg.fine_tune_bn,
        head_bn_momentum=seg.bn_momentum,
        head_bn_epsilon=seg.bn_epsilon,
        bn_momentum=config.bn_momentum,
        bn_epsilon=config.bn_epsilon,
        dtype=jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32,
        depthwise_impl=config.depthwise_impl,
        pointwise_impl=config.pointwise_impl,
    )
    kwargs.update(overrides)
    return MobileDeepLabV3(config_lib.architecture_from_config(config, 0), num_classes, **kwargs)
