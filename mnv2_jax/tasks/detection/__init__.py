"""Object detection: SSDLite on the MobileNetV2 backbone (the paper's Section 6.2, Tables 5-6).

Head: `head.SSDLite` (TF Object Detection API's `ssdlite_mobilenet_v2`; `detection.head='ssd'` for
the regular SSD head). Input: `input` (TFDS datasets with `coco/2017`'s features: `coco/2017`
itself, or the offline `mnist_detect_offline`). Loss: `loss` (targets from `anchors`, `box_coder`,
`targets`). Eval: `postprocess` (per-class NMS on the device) and `evaluator` (COCO AP through
pycocotools). `counts` gives `mnv2 info --task detection` its numbers from the same layout.

Weight decay: TF regularises every head kernel, the depthwise ones included (the backbone's
depthwise kernels are not), so `weight_decay_rule` turns it on for the head's depthwise convs.

`config.num_classes` counts foreground classes (80 for COCO); the head adds the background slot.
Modules holding JAX are imported where they are used, so `mnv2 info` stays light.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mnv2_jax import config as config_lib
from mnv2_jax.tasks.base import Batch, Task
from mnv2_jax.tasks.detection import anchors as anchors_lib
from mnv2_jax.tasks.detection import counts

HEAD_SCOPES = ("extra_", "box_predictor_", "class_predictor_")


class DetectionTask(Task):
    name = "detection"
    train_metrics = ("cls_loss", "box_loss", "positives")
    main_metric = "eval/AP"

    def __init__(self, config: Any):
        super().__init__(config)
        anchors_lib.feature_map_sizes(config.resolution)  # a resolution too small for six maps: say so now
        if config.get("output_stride", None) is not None:
            raise ValueError(
                "config key 'output_stride': detection needs the backbone at its full stride (None), "
                f"got {config.output_stride}"
            )

    def _section(self) -> Any:
        return self.config.get("detection", None) or config_lib.base_config().detection

    def dataset_info(self) -> Any:
        from mnv2_jax.tasks.detection import input as input_lib

        return input_lib.dataset_info(self.config)

    def train_iterator(self, start_step: int = 0) -> Iterator[Batch]:
        from mnv2_jax.tasks.detection import input as input_lib

        return input_lib.train_iterator(self.config, start_step)

    def eval_iterator(self) -> Iterator[Batch]:
        from mnv2_jax.tasks.detection import input as input_lib

        return input_lib.eval_iterator(self.config)

    def architecture(self) -> Any:
        return config_lib.architecture_from_config(self.config, 0)

    def model(self, num_classes: int, **overrides: Any) -> Any:
        import jax.numpy as jnp

        from mnv2_jax.tasks.detection.head import SSDLite

        kwargs = dict(
            num_slots=num_classes + 1,
            head_type=self._section().head,
            class_prior=self._section().get("class_prior", None),
            bn_momentum=self.config.bn_momentum,
            bn_epsilon=self.config.bn_epsilon,
            dtype=jnp.bfloat16 if self.config.dtype == "bfloat16" else jnp.float32,
            depthwise_impl=self.config.depthwise_impl,
            pointwise_impl=self.config.pointwise_impl,
        )
        kwargs.update(overrides)
        return SSDLite(self.architecture(), **kwargs)

    def count(self, num_classes: int) -> dict[str, int]:
        whole, head = counts.count(
            self.architecture(), self.config.resolution, num_classes, self._section().head
        )
        return {
            "madds": whole.madds,
            "params": whole.params,
            "params_bn": whole.params_bn,
            "head_madds": head.madds,
            "head_params": head.params,
            "head_params_bn": head.params_bn,
        }

    def anchors(self):
        import jax.numpy as jnp

        return jnp.asarray(anchors_lib.ssd_anchors(self.config.resolution))

    def loss_settings(self):
        from mnv2_jax.tasks.detection.loss import LossSettings

        section = self._section()
        return LossSettings(
            neg_pos_ratio=float(section.neg_pos_ratio),
            min_negatives=int(section.min_negatives),
            num_hard_examples=int(section.num_hard_examples),
        )

    def nms_settings(self):
        from mnv2_jax.tasks.detection.postprocess import NMSSettings

        section = self._section()
        return NMSSettings(
            score_threshold=float(section.score_threshold),
            iou_threshold=float(section.iou_threshold),
            max_per_class=int(section.max_detections),
            max_detections=int(section.max_detections),
        )

    def loss(self, outputs: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        from mnv2_jax.tasks.detection.loss import detection_loss

        return detection_loss(outputs, batch, self.anchors(), self.loss_settings())

    def eval_outputs(self, model: Any, variables: dict, batch: dict[str, Any]) -> Any:
        import jax.numpy as jnp

        from mnv2_jax.tasks.detection.loss import detection_loss
        from mnv2_jax.tasks.detection.postprocess import detect

        outputs = model.apply(variables, batch["image"], train=False)
        anchors = self.anchors()
        # The eval loss counts the same boxes training does: real ones, crowds left out.
        solo = batch["box_mask"] * (1 - batch["is_crowd"]) * batch["mask"][:, None]
        loss, _ = detection_loss(outputs, {**batch, "box_mask": solo}, anchors, self.loss_settings())
        found = detect(outputs["box_encodings"], outputs["class_logits"], anchors, self.nms_settings())
        ground_truth = ("boxes", "labels", "box_mask", "is_crowd", "area", "image_id", "image_size", "mask")
        return {
            "detection_boxes": found["boxes"],
            "detection_scores": found["scores"],
            "detection_classes": found["classes"],
            "num_detections": found["num_detections"],
            "loss": loss.astype(jnp.float32),
            **{k: batch[k] for k in ground_truth},
        }

    def evaluator(self) -> Any:
        from mnv2_jax.tasks.detection.evaluator import CocoEvaluator

        return CocoEvaluator(int(self.config.num_classes))

    def weight_decay_rule(self, path: tuple[str, ...]) -> bool | None:
        """TF's `l2_regularizer` covers every kernel of the head, depthwise ones included."""
        if path and path[-1] == "kernel" and path[0].startswith(HEAD_SCOPES):
            return True
        return None
