"""Image classification: the paper's ImageNet task and the offline MNIST default.

Head: global average pool, dropout and a fully connected classifier (`models.mobilenet_v2`, with
`arch.num_classes`). Input: any TFDS image-classification dataset (`data.input_pipeline`). Loss:
softmax cross entropy with the recipe's label smoothing. Eval: loss, top-1, top-5.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mnv2_jax import accounting
from mnv2_jax import config as config_lib
from mnv2_jax.tasks.base import Batch, Task

# The loss and evaluator import JAX: they load when used, so that `count` (sweep listings,
# `mnv2 info`) stays free of it.


class ClassificationTask(Task):
    name = "classification"
    train_metrics = ("top1",)
    main_metric = "eval_ema/top1"

    def dataset_info(self) -> Any:
        from mnv2_jax.data import input_pipeline

        return input_pipeline.dataset_info(self.config)

    def train_iterator(self, start_step: int = 0) -> Iterator[Batch]:
        from mnv2_jax.data import input_pipeline

        return input_pipeline.train_iterator(self.config, start_step)

    def eval_iterator(self) -> Iterator[Batch]:
        from mnv2_jax.data import input_pipeline

        return input_pipeline.eval_iterator(self.config)

    def model(self, num_classes: int, **overrides: Any) -> Any:
        return model_from_config(self.config, num_classes, **overrides)

    def count(self, num_classes: int) -> dict[str, int]:
        counts = accounting.count(
            config_lib.architecture_from_config(self.config, num_classes), self.config.resolution
        )
        return {"madds": counts.madds, "params": counts.params, "params_bn": counts.params_bn}

    def loss(self, outputs: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        from mnv2_jax.tasks.classification import loss as loss_lib

        label_smoothing = self.config.optim.get("label_smoothing") or 0.0
        return loss_lib.train_loss(outputs, batch["label"], label_smoothing)

    def eval_outputs(self, model: Any, variables: dict, batch: dict[str, Any]) -> Any:
        import jax.numpy as jnp

        from mnv2_jax.models.inference import predict
        from mnv2_jax.tasks.classification import loss as loss_lib

        logits = predict(model, variables, batch["image"])
        mask = batch.get("mask", jnp.ones(logits.shape[:1], jnp.float32))
        return loss_lib.eval_sums(logits, batch["label"], mask)

    def evaluator(self) -> Any:
        from mnv2_jax.tasks.classification.evaluator import ClassificationEvaluator

        return ClassificationEvaluator()


def model_from_config(config: Any, num_classes: int, **overrides: Any):
    """The Flax module a classification config trains (`overrides` replace module fields,
    e.g. `bn_axis_name`)."""
    import jax.numpy as jnp

    from mnv2_jax.models.mobilenet_v2 import MobileNetV2

    kwargs = dict(
        dropout_rate=config.dropout_rate,
        bn_momentum=config.bn_momentum,
        bn_epsilon=config.bn_epsilon,
        dtype=jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32,
        depthwise_impl=config.depthwise_impl,
        pointwise_impl=config.pointwise_impl,
    )
    kwargs.update(overrides)
    return MobileNetV2(config_lib.architecture_from_config(config, num_classes), **kwargs)
