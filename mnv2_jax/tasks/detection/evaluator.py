"""COCO box AP over the eval split, through pycocotools (the reference implementation, which TF's
`coco_detection_metrics` and torchvision's references wrap).

Each eval batch hands over its detections (post-processed on the device) and its ground truth.
The ground truth becomes a COCO annotation set on the host: boxes in pixels of the original
image (`[x, y, w, h]`), `area` from the dataset (COCO's is the mask's), `iscrowd` (crowd boxes are
matched but neither count as misses nor as false positives), category = the contiguous label on
both sides. `result()` runs `COCOeval` and returns AP (IoU .50:.05:.95), AP50, AP75, APs, APm, APl
(`stats[0:6]`, 100 detections per image) and the mean eval loss.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import jax
import numpy as np

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _xywh(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """Normalised `[ymin, xmin, ymax, xmax]` -> pixel `[x, y, w, h]`."""
    y0, x0, y1, x1 = (boxes[:, i] for i in range(4))
    return np.stack([x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height], axis=1)


class CocoEvaluator:
    """Accumulates detections and ground truth per image; `result()` is COCO's box AP."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.detections: list[dict] = []
        self.losses: list[float] = []

    def add(self, outputs: dict[str, Any]) -> None:
        out = jax.device_get(outputs)
        if "loss" in out:
            self.losses.append(float(out["loss"]))
        for i in np.flatnonzero(np.asarray(out["mask"]) > 0):
            image_id = int(out["image_id"][i])
            height, width = (float(v) for v in out["image_size"][i])
            self.images.append({"id": image_id, "height": height, "width": width})
            real = np.asarray(out["box_mask"][i]) > 0
            for box, label, area, crowd in zip(
                _xywh(np.asarray(out["boxes"][i])[real], height, width),
                np.asarray(out["labels"][i])[real],
                np.asarray(out["area"][i])[real],
                np.asarray(out["is_crowd"][i])[real],
            ):
                self.annotations.append(
                    {
                        "id": len(self.annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(label),
                        "bbox": [float(v) for v in box],
                        "area": float(area),
                        "iscrowd": int(crowd),
                    }
                )
            n = int(out["num_detections"][i])
            for box, label, score in zip(
                _xywh(np.asarray(out["detection_boxes"][i][:n]), height, width),
                np.asarray(out["detection_classes"][i][:n]),
                np.asarray(out["detection_scores"][i][:n]),
            ):
                self.detections.append(
                    {
                        "image_id": image_id,
                        "category_id": int(label),
                        "bbox": [float(v) for v in box],
                        "score": float(score),
                    }
                )

    def result(self) -> dict[str, float]:
        if not self.images:
            raise ValueError("eval split: no batches (is the split empty?)")
        values = dict(zip(METRICS, coco_ap(self.images, self.annotations, self.detections, self.num_classes)))
        if self.losses:
            values["loss"] = float(np.mean(self.losses))
        values["examples"] = len(self.images)
        return values


def coco_ap(
    images: list[dict], annotations: list[dict], detections: list[dict], num_classes: int
) -> list[float]:
    """COCOeval's `stats[0:6]` for box detections (0 for all when there are no detections;
    COCO's -1, "no ground truth in this area range", is kept)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return [0.0] * len(METRICS)
    ground_truth = COCO()
    ground_truth.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in range(num_classes)],
    }
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and tables
        ground_truth.createIndex()
        found = ground_truth.loadRes(detections)
        evaluation = COCOeval(ground_truth, found, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return [float(v) for v in evaluation.stats[: len(METRICS)]]
