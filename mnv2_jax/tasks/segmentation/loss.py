"""Segmentation loss and per-batch sums: per-pixel softmax cross entropy, 255 ignored.

As TF DeepLab: the logits are already upsampled to the label size (the model does it), pixels
labelled 255 get weight 0, and the loss is the mean over the remaining pixels of the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

IGNORE_LABEL = 255


def _valid_and_safe(labels: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array]:
    valid = (labels != IGNORE_LABEL) & (labels >= 0) & (labels < num_classes)
    return valid, jnp.where(valid, labels, 0)


def train_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross entropy over the batch's labelled pixels, and their pixel accuracy.

    `logits` (B, H, W, C), `labels` int (B, H, W) with 255 = ignore."""
    valid, safe = _valid_and_safe(labels, logits.shape[-1])
    weight = valid.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weight), 1.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    correct = (jnp.argmax(logits, -1) == safe).astype(jnp.float32)
    return jnp.sum(ce * weight) / count, {"pixel_acc": jnp.sum(correct * weight) / count}


def confusion_matrix(
    labels: jax.Array, predictions: jax.Array, num_classes: int, weights: jax.Array
) -> jax.Array:
    """`cm[true, predicted]`: int32 pixel counts over the pixels with non-zero `weights` (0/1) whose
    label is a class (255 and anything else out of range are left out)."""
    valid, safe = _valid_and_safe(labels, num_classes)
    keep = (valid & (weights > 0)).astype(jnp.int32)
    index = safe * num_classes + predictions.astype(jnp.int32)
    counts = jax.ops.segment_sum(keep.ravel(), index.ravel(), num_segments=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def eval_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """One eval batch's contribution: the confusion matrix of argmax predictions, and the summed loss
    and count of labelled pixels, over the real (mask == 1) examples."""
    num_classes = logits.shape[-1]
    weights = jnp.broadcast_to(mask[:, None, None], labels.shape)
    valid, safe = _valid_and_safe(labels, num_classes)
    weight = valid.astype(jnp.float32) * weights
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe)
    return {
        "confusion": confusion_matrix(labels, jnp.argmax(logits, -1), num_classes, weights),
        "loss": jnp.sum(ce * weight),
        "pixels": jnp.sum(weight),
    }
