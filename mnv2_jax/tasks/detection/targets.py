"""Training targets: IoU, TF's argmax matcher (0.5, forced best anchor) and the encoded targets.

`ssdlite_mobilenet_v2_coco.config`'s `argmax_matcher`: an anchor whose best IoU with a ground-truth
box is >= 0.5 is positive for that box, anything lower is negative (no ignore band); and
`force_match_for_each_row`: every ground-truth box also claims its single best anchor, whatever
the IoU (an anchor that is the best of several boxes goes to the
first such box, as TF's argmax does). Ground truth comes padded to a fixed count with a validity
mask, so every shape is static and the whole assignment runs inside the jitted train step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mnv2_jax.tasks.detection import box_coder

MATCH_THRESHOLD = 0.5


def iou(boxes: jax.Array, anchors: jax.Array) -> jax.Array:
    """`[G, N]` intersection over union of `[G, 4]` and `[N, 4]` corner boxes (0 where both are empty)."""
    ymin = jnp.maximum(boxes[:, None, 0], anchors[None, :, 0])
    xmin = jnp.maximum(boxes[:, None, 1], anchors[None, :, 1])
    ymax = jnp.minimum(boxes[:, None, 2], anchors[None, :, 2])
    xmax = jnp.minimum(boxes[:, None, 3], anchors[None, :, 3])
    intersection = jnp.maximum(ymax - ymin, 0.0) * jnp.maximum(xmax - xmin, 0.0)
    area_boxes = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    area_anchors = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
    union = area_boxes[:, None] + area_anchors[None, :] - intersection
    return jnp.where(intersection > 0, intersection / jnp.where(union > 0, union, 1.0), 0.0)


def match(similarity: jax.Array, valid: jax.Array, threshold: float = MATCH_THRESHOLD) -> jax.Array:
    """For each of the N anchors, the index of its ground-truth box, or -1 (negative).

    `similarity` is `[G, N]` IoU, `valid` `[G]` marks the real (unpadded) boxes.
    """
    similarity = jnp.where(valid[:, None], similarity, -1.0)
    matches = jnp.argmax(similarity, axis=0)
    matches = jnp.where(jnp.max(similarity, axis=0) >= threshold, matches, -1)
    # Forced matches: each valid row's best column goes to that row.
    best_anchor = jnp.argmax(similarity, axis=1)
    indicators = jax.nn.one_hot(best_anchor, similarity.shape[1], dtype=jnp.int32) * valid[:, None]
    forced_row = jnp.argmax(indicators, axis=0)
    return jnp.where(jnp.any(indicators > 0, axis=0), forced_row, matches)


def assign(
    gt_boxes: jax.Array,
    gt_labels: jax.Array,
    gt_valid: jax.Array,
    anchors: jax.Array,
    threshold: float = MATCH_THRESHOLD,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One image's targets: `(box_codes [N, 4], class_slot [N] (0 = background, label + 1),
    positive [N] bool)`. Box codes of negatives are zero (they carry no weight)."""
    matches = match(iou(gt_boxes, anchors), gt_valid.astype(bool), threshold)
    positive = matches >= 0
    index = jnp.maximum(matches, 0)
    codes = box_coder.encode(gt_boxes[index], anchors)
    codes = jnp.where(positive[:, None], codes, 0.0)
    slots = jnp.where(positive, gt_labels[index].astype(jnp.int32) + 1, 0)
    return codes, slots, positive


def assign_batch(
    gt_boxes: jax.Array, gt_labels: jax.Array, gt_valid: jax.Array, anchors: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`assign` over a batch: `[B, G, 4]`, `[B, G]`, `[B, G]` in; `[B, N, 4]`, `[B, N]`, `[B, N]` out."""
    return jax.vmap(assign, in_axes=(0, 0, 0, None))(gt_boxes, gt_labels, gt_valid, anchors)
