"""mIOU over an eval split from one split-wide confusion matrix (TF's `tf.metrics.mean_iou`).

Each batch's confusion matrix is added up on the host in int64 (a split has more pixels than
float32 counts exactly); IOU_c = TP / (TP + FP + FN) per class, and the mean is over the classes
whose denominator is non-zero, so a class absent from both labels and predictions is left out
(and so is its `iou/<class>` entry). Per-image IOUs are never averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np


def iou_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-class IOU (NaN where the class is in neither the labels nor the predictions)."""
    confusion = np.asarray(confusion, np.float64)
    true_positive = np.diag(confusion)
    denominator = confusion.sum(0) + confusion.sum(1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, true_positive / denominator, np.nan)


class SegmentationEvaluator:
    """Accumulates `loss.eval_sums` over the split; `result()` gives miou, pixel_acc, loss, iou/<name>."""

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None) -> None:
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(c) for c in range(num_classes)]
        if len(self.class_names) != num_classes:
            self.class_names = [str(c) for c in range(num_classes)]
        self.confusion = np.zeros((num_classes, num_classes), np.int64)
        self.loss = 0.0
        self.pixels = 0.0
        self.batches = 0

    def add(self, sums: dict[str, Any]) -> None:
        sums = jax.device_get(sums)
        self.confusion += np.asarray(sums["confusion"], np.int64)
        self.loss += float(sums["loss"])
        self.pixels += float(sums["pixels"])
        self.batches += 1

    def result(self) -> dict[str, float]:
        if not self.batches:
            raise ValueError("eval split: no batches (is the split empty?)")
        iou = iou_from_confusion(self.confusion)
        present = ~np.isnan(iou)
        total = self.confusion.sum()
        out: dict[str, float] = {
            "miou": float(np.mean(iou[present])) if present.any() else 0.0,
            "pixel_acc": float(np.trace(self.confusion) / total) if total else 0.0,
            "loss": self.loss / max(self.pixels, 1.0),
        }
        for name, value, ok in zip(self.class_names, iou, present):
            if ok:
                out[f"iou/{name}"] = float(value)
        return out
