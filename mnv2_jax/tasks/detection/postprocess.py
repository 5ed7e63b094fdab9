"""Post-processing: scores, decoded boxes and per-class non-maximum suppression, as a fixed-size
batched JAX op (jit-able, so eval runs it on the device), with a NumPy reference to test it by.

`ssdlite_mobilenet_v2_coco.config`'s `post_processing`: sigmoid scores with the background
column dropped, boxes decoded with the Faster R-CNN coder and clipped to the image, then per
class greedy NMS (scores > 1e-8, suppress IoU > 0.6, at most 100 per class), and the 100
highest-scoring detections over all classes. Outputs are padded to `max_detections` rows;
`num_detections` says how many are real.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from mnv2_jax.tasks.detection import box_coder


@dataclasses.dataclass(frozen=True)
class NMSSettings:
    score_threshold: float = 1e-8
    iou_threshold: float = 0.6
    max_per_class: int = 100
    max_detections: int = 100


def decode_predictions(
    box_encodings: jax.Array, class_logits: jax.Array, anchors: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """`(boxes [B, N, 4] clipped to [0, 1], scores [B, N, C])`, C = classes without background."""
    boxes = jnp.clip(box_coder.decode(box_encodings.astype(jnp.float32), anchors), 0.0, 1.0)
    scores = jax.nn.sigmoid(class_logits[..., 1:].astype(jnp.float32))
    return boxes, scores


def _iou_one(box: jax.Array, boxes: jax.Array) -> jax.Array:
    """IoU of one `[4]` box with `[N, 4]` boxes (0 where the union is empty)."""
    ymin, xmin = jnp.maximum(box[0], boxes[:, 0]), jnp.maximum(box[1], boxes[:, 1])
    ymax, xmax = jnp.minimum(box[2], boxes[:, 2]), jnp.minimum(box[3], boxes[:, 3])
    inter = jnp.maximum(ymax - ymin, 0.0) * jnp.maximum(xmax - xmin, 0.0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def _nms_one_class(boxes: jax.Array, scores: jax.Array, settings: NMSSettings) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS of one class: `(anchor index [K], score [K])`, score -inf where no detection."""
    k = settings.max_per_class

    def body(i, carry):
        remaining, indices, kept = carry
        best = jnp.argmax(remaining)
        score = remaining[best]
        ok = score > settings.score_threshold
        suppressed = (_iou_one(boxes[best], boxes) > settings.iou_threshold) & ok
        remaining = jnp.where(suppressed, -jnp.inf, remaining).at[best].set(-jnp.inf)
        indices = indices.at[i].set(best)
        kept = kept.at[i].set(jnp.where(ok, score, -jnp.inf))
        return remaining, indices, kept

    init = (scores, jnp.zeros((k,), jnp.int32), jnp.full((k,), -jnp.inf, jnp.float32))
    _, indices, kept = jax.lax.fori_loop(0, k, body, init)
    return indices, kept


def _nms_one_image(boxes: jax.Array, scores: jax.Array, settings: NMSSettings) -> dict[str, jax.Array]:
    indices, kept = jax.vmap(_nms_one_class, in_axes=(None, 1, None))(boxes, scores, settings)  # [C, K]
    flat = kept.reshape(-1)
    m = min(settings.max_detections, flat.shape[0])
    top_scores, top = jax.lax.top_k(flat, m)
    real = jnp.isfinite(top_scores)
    out_boxes = jnp.where(real[:, None], boxes[indices.reshape(-1)[top]], 0.0)
    out = {
        "boxes": out_boxes,
        "scores": jnp.where(real, top_scores, 0.0),
        "classes": jnp.where(real, top // settings.max_per_class, 0).astype(jnp.int32),
        "num_detections": jnp.sum(real).astype(jnp.int32),
    }
    if m < settings.max_detections:  # fewer candidates than rows: pad
        pad = settings.max_detections - m
        out = {k: (jnp.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)) if v.ndim else v) for k, v in out.items()}
    return out


def batched_nms(
    boxes: jax.Array, scores: jax.Array, settings: NMSSettings = NMSSettings()
) -> dict[str, jax.Array]:
    """Per-class NMS over a batch: `boxes [B, N, 4]`, `scores [B, N, C]` in; `boxes [B, M, 4]`,
    `scores [B, M]`, `classes [B, M]` (0-based, background excluded) and `num_detections [B]` out,
    M = `max_detections`, best first."""
    return jax.vmap(_nms_one_image, in_axes=(0, 0, None))(boxes, scores, settings)


def detect(
    box_encodings: jax.Array,
    class_logits: jax.Array,
    anchors: jax.Array,
    settings: NMSSettings = NMSSettings(),
) -> dict[str, jax.Array]:
    """The detections of a batch from the head's raw outputs."""
    boxes, scores = decode_predictions(box_encodings, class_logits, anchors)
    return batched_nms(boxes, scores, settings)


# --------------------------------------------------------------------------------------------------
# NumPy reference: plain loops, to test the batched op against.


def _iou_numpy(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ymin, xmin = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    ymax, xmax = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.maximum(ymax - ymin, 0.0) * np.maximum(xmax - xmin, 0.0)
    union = (
        (box[2] - box[0]) * (box[3] - box[1])
        + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        - inter
    )
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms_reference(
    boxes: np.ndarray, scores: np.ndarray, settings: NMSSettings = NMSSettings()
) -> list[list[tuple]]:
    """Per image, the detections as `(score, class, anchor index)` tuples, best first: sort each
    class's boxes by score, keep a box unless it overlaps a kept one by IoU > threshold, stop at
    `max_per_class`; then the `max_detections` best over all classes (ties: lower class first)."""
    out = []
    for image_boxes, image_scores in zip(boxes, scores):
        found = []
        for c in range(image_scores.shape[1]):
            order = np.argsort(-image_scores[:, c], kind="stable")
            kept: list[int] = []
            for i in order:
                if len(kept) == settings.max_per_class or image_scores[i, c] <= settings.score_threshold:
                    break
                if kept and np.any(_iou_numpy(image_boxes[i], image_boxes[kept]) > settings.iou_threshold):
                    continue
                kept.append(int(i))
            found += [(float(image_scores[i, c]), c, i) for i in kept]
        found.sort(key=lambda t: -t[0])  # stable: equal scores keep class order
        out.append(found[: settings.max_detections])
    return out
