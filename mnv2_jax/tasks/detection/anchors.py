"""SSD anchors, as the TF Object Detection API's `ssd_anchor_generator` makes them (NumPy, static).

`ssdlite_mobilenet_v2_coco.config`: six maps, scales 0.2..0.95 spaced evenly (plus 1.0 for the
last interpolated scale), aspect ratios (1, 2, 0.5, 3, 0.3333), `reduce_boxes_in_lowest_layer`
(the proto default: true), so the first map carries 3 anchors, (0.1, 1), (0.2, 2), (0.2, 0.5), and
every other map 6: its scale at each aspect ratio plus sqrt(scale * next scale) at ratio 1.

A box of scale s and ratio r is s/sqrt(r) high and s*sqrt(r) wide (normalised to the input);
centres sit at ((i + 0.5) / H, (j + 0.5) / W) of each H x W map; boxes are not clipped (TF's
generator passes no clip window), so the big ones reach past the image. Order: anchor fastest,
then x, then y, then map (`[ymin, xmin, ymax, xmax]` rows). At 320 x 320 the maps are
20, 10, 5, 3, 2, 1: 2,034 anchors; at 300, 19, 10, 5, 3, 2, 1: 1,917.

Anchors follow from the map sizes, which follow from the input size, so they are computed here
from the resolution and never stored in a checkpoint.
"""

from __future__ import annotations

import math

import numpy as np

NUM_MAPS = 6
MIN_SCALE = 0.2
MAX_SCALE = 0.95
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.3333)  # the config's literal 0.3333, not 1/3
LOWEST_LAYER_SPECS = ((0.1, 1.0), (MIN_SCALE, 2.0), (MIN_SCALE, 0.5))
# The smallest input TF's SSD feature extractors accept (`check_min_image_dim(33, ...)`).
MIN_RESOLUTION = 33


def feature_map_sizes(resolution: int) -> tuple[int, ...]:
    """Side of each of the six square maps: the stride-16 and stride-32 backbone taps, then
    four stride-2 'SAME' extra layers."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < MIN_RESOLUTION:
        raise ValueError(
            f"resolution: detection needs an integer >= {MIN_RESOLUTION} (six feature maps, as TF's "
            f"SSD feature extractor requires), got {resolution!r}"
        )
    sizes = [math.ceil(resolution / 16), math.ceil(resolution / 32)]
    while len(sizes) < NUM_MAPS:
        sizes.append(math.ceil(sizes[-1] / 2))
    return tuple(sizes)


def box_specs() -> tuple[tuple[tuple[float, float], ...], ...]:
    """(scale, aspect ratio) of each anchor per location, per map."""
    scales = [MIN_SCALE + (MAX_SCALE - MIN_SCALE) * i / (NUM_MAPS - 1) for i in range(NUM_MAPS)] + [1.0]
    out = []
    for layer in range(NUM_MAPS):
        if layer == 0:
            out.append(LOWEST_LAYER_SPECS)
            continue
        scale, next_scale = scales[layer], scales[layer + 1]
        specs = [(scale, ratio) for ratio in ASPECT_RATIOS]
        specs.append((math.sqrt(scale * next_scale), 1.0))
        out.append(tuple(specs))
    return tuple(out)


def anchors_per_location() -> tuple[int, ...]:
    """(3, 6, 6, 6, 6, 6)."""
    return tuple(len(specs) for specs in box_specs())


def grid_anchors(size: int, specs: tuple[tuple[float, float], ...]) -> np.ndarray:
    """TF's `tile_anchors` on a `size` x `size` map: `[size * size * len(specs), 4]` corners."""
    scales = np.array([s for s, _ in specs], np.float64)
    ratios = np.sqrt(np.array([r for _, r in specs], np.float64))
    heights, widths = scales / ratios, scales * ratios
    stride = 1.0 / size
    centres = np.arange(size, dtype=np.float64) * stride + 0.5 * stride
    cy, cx, h = np.meshgrid(centres, centres, heights, indexing="ij")
    _, _, w = np.meshgrid(centres, centres, widths, indexing="ij")
    boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)
    return boxes.reshape(-1, 4)


def ssd_anchors(resolution: int) -> np.ndarray:
    """All anchors for a `resolution` x `resolution` input: float32 `[N, 4]`, `[ymin, xmin, ymax, xmax]`."""
    maps = [grid_anchors(size, specs) for size, specs in zip(feature_map_sizes(resolution), box_specs())]
    return np.concatenate(maps).astype(np.float32)


def num_anchors(resolution: int) -> int:
    return sum(s * s * a for s, a in zip(feature_map_sizes(resolution), anchors_per_location()))
