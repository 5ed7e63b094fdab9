"""The Faster R-CNN box coder with SSD's scales (10, 10, 5, 5): TF's `FasterRcnnBoxCoder`.

A box relative to its anchor is `[ty, tx, th, tw]` = `[10 (y - ya) / ha, 10 (x - xa) / wa,
5 log(h / ha), 5 log(w / wa)]` with (y, x) the centres and (h, w) the sizes; TF adds 1e-8 to
the four sizes before dividing and taking logs (encoding only). Boxes are `[ymin, xmin, ymax, xmax]`.
Works on NumPy and JAX arrays alike (`xp` is picked from the input).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

SCALES = (10.0, 10.0, 5.0, 5.0)
EPSILON = 1e-8


def _xp(x: Any):
    return np if isinstance(x, np.ndarray) else jnp


def center_size(boxes: Any) -> tuple[Any, Any, Any, Any]:
    """`(ycenter, xcenter, height, width)` of `[..., 4]` corner boxes."""
    ymin, xmin, ymax, xmax = (boxes[..., i] for i in range(4))
    return (ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin


def encode(boxes: Any, anchors: Any, scales: tuple[float, ...] = SCALES) -> Any:
    """`[..., 4]` codes of `boxes` relative to `anchors` (broadcasting)."""
    xp = _xp(boxes)
    ya, xa, ha, wa = center_size(anchors)
    y, x, h, w = center_size(boxes)
    ha, wa, h, w = ha + EPSILON, wa + EPSILON, h + EPSILON, w + EPSILON
    codes = ((y - ya) / ha, (x - xa) / wa, xp.log(h / ha), xp.log(w / wa))
    return xp.stack([c * s for c, s in zip(codes, scales)], axis=-1)


def decode(codes: Any, anchors: Any, scales: tuple[float, ...] = SCALES) -> Any:
    """Corner boxes from `[..., 4]` codes relative to `anchors`: the inverse of `encode`."""
    xp = _xp(codes)
    ya, xa, ha, wa = center_size(anchors)
    ty, tx, th, tw = (codes[..., i] / s for i, s in enumerate(scales))
    h, w = xp.exp(th) * ha, xp.exp(tw) * wa
    y, x = ty * ha + ya, tx * wa + xa
    return xp.stack([y - h / 2, x - w / 2, y + h / 2, x + w / 2], axis=-1)
