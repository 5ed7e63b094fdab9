"""The SSD training loss of `ssdlite_mobilenet_v2_coco.config`.

* Classification: sigmoid cross entropy summed over all S = classes + 1 columns (the target is
  the one-hot slot, column 0 for background), not a softmax and not a focal loss.
* Localisation: Huber (smooth L1, delta 1) summed over the four box codes, on positives only.
* Hard example mining (`loss_type: CLASSIFICATION`): per image, anchors ranked by classification
  loss; the top `num_hard_examples` (3,000) are eligible, and of those every positive and the
  `max(min_negatives, neg_pos_ratio * positives)` highest-loss negatives count. TF's miner also
  runs an NMS at IoU 0.99 over the candidates' predicted boxes; it is left out here (it drops
  only near-identical boxes).
* Both sums are divided by the number of positive anchors in the whole (global) batch, at
  least 1 (`normalize_loss_by_num_matches`); weights 1 and 1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from mnv2_jax.tasks.detection import targets


@dataclasses.dataclass(frozen=True)
class LossSettings:
    neg_pos_ratio: float = 3.0
    min_negatives: int = 3
    num_hard_examples: int = 3000
    classification_weight: float = 1.0
    localization_weight: float = 1.0


def _ranks(values: jax.Array) -> jax.Array:
    """Rank of each entry along the last axis in descending order (0 = largest; ties by index)."""
    order = jnp.argsort(-values, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


def mine_hard_examples(cls_loss: jax.Array, positive: jax.Array, settings: LossSettings) -> jax.Array:
    """`[B, N]` bool: the anchors whose losses count (all mined positives, the hardest negatives)."""
    cls_loss = jax.lax.stop_gradient(cls_loss)
    eligible = _ranks(cls_loss) < settings.num_hard_examples
    num_pos = jnp.sum(positive & eligible, axis=-1, keepdims=True)
    max_neg = jnp.maximum(settings.min_negatives, settings.neg_pos_ratio * num_pos)
    negative_rank = _ranks(jnp.where(positive, -jnp.inf, cls_loss))
    return eligible & (positive | (negative_rank < max_neg))


def per_anchor_losses(
    box_encodings: jax.Array, class_logits: jax.Array, box_targets: jax.Array, slots: jax.Array, positive
) -> tuple[jax.Array, jax.Array]:
    """`(classification [B, N], localisation [B, N])` before mining; localisation is 0 on negatives."""
    one_hot = jax.nn.one_hot(slots, class_logits.shape[-1], dtype=jnp.float32)
    cls = jnp.sum(optax.sigmoid_binary_cross_entropy(class_logits.astype(jnp.float32), one_hot), axis=-1)
    loc = jnp.sum(optax.huber_loss(box_encodings.astype(jnp.float32), box_targets, delta=1.0), axis=-1)
    return cls, jnp.where(positive, loc, 0.0)


def detection_loss(
    outputs: dict[str, jax.Array],
    batch: dict[str, jax.Array],
    anchors: jax.Array,
    settings: LossSettings = LossSettings(),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The batch's loss and metrics from the head's `outputs` (`box_encodings`, `class_logits`) and
    the batch's padded ground truth (`boxes` [B, G, 4], `labels` [B, G], `box_mask` [B, G])."""
    box_targets, slots, positive = targets.assign_batch(
        batch["boxes"], batch["labels"], batch["box_mask"], anchors
    )
    cls, loc = per_anchor_losses(
        outputs["box_encodings"], outputs["class_logits"], box_targets, slots, positive
    )
    kept = mine_hard_examples(cls, positive, settings)
    normaliser = jnp.maximum(jnp.sum(positive).astype(jnp.float32), 1.0)
    cls_loss = jnp.sum(jnp.where(kept, cls, 0.0)) / normaliser
    box_loss = jnp.sum(jnp.where(kept, loc, 0.0)) / normaliser
    loss = settings.classification_weight * cls_loss + settings.localization_weight * box_loss
    metrics = {
        "cls_loss": cls_loss,
        "box_loss": box_loss,
        "positives": jnp.sum(positive).astype(jnp.float32) / positive.shape[0],
    }
    return loss, metrics
