"""Multiply-adds and parameters of the detection head, by the backbone's rules (`mnv2_jax.accounting`).

Per extra layer (SSDLite): 1x1 conv to `mid` on the previous map, 3x3 depthwise stride 2, 1x1 conv
to `out`, batch norm after each. Per map and predictor: 3x3 depthwise on the map (batch norm), then
a 1x1 conv with bias to `anchors * 4` (box) or `anchors * (classes + 1)` (class). The regular SSD
head: 1x1 then 3x3 stride-2 conv per extra layer, and one 3x3 conv with bias per predictor. At
width 1.0, 320 x 320, 80 classes + background: head 2,096,501 parameters (+16,640 batch norm),
177,617,344 multiply-adds; with the backbone up to its `head` conv 4,286,261 and 788,830,144 (the
paper's Table 6: 4.3M, 0.8B; Table 5: 2.1M for the head). Regular SSD head: 14,773,173 and
1,259,068,672 (Table 5: 14.8M, 1.25B). Table 5's 0.35B for the SSDLite head is not reproduced
by this or any count consistent with the table's other numbers.
"""

from __future__ import annotations

from mnv2_jax import accounting
from mnv2_jax.spec import Architecture
from mnv2_jax.tasks.detection import anchors as anchors_lib
from mnv2_jax.tasks.detection.layout import (
    HEAD_TYPES,
    check_head_type,
    extra_depths,
    feature_channels,
    feature_taps,
)


def head_layers(
    arch: Architecture, resolution: int, num_slots: int, head_type: str = "ssdlite"
) -> list[accounting.LayerCount]:
    """The head's layers on `arch` (built with `num_classes=0`) at `resolution`."""
    check_head_type(head_type)
    sizes = anchors_lib.feature_map_sizes(resolution)
    backbone = accounting.count(arch, resolution)
    first_tap = feature_taps(arch)[0].replace("/expansion", "/expand")
    if backbone.out_shape(first_tap)[0] != sizes[0] or backbone.out_shape("head")[0] != sizes[1]:
        raise AssertionError("the backbone's map sizes disagree with the anchor layout")
    conv = accounting.conv
    lite = head_type == "ssdlite"
    layers = []
    h, c = sizes[1], arch.head.out_channels
    for k, (mid, out) in enumerate(extra_depths(arch.width), start=2):
        layers.append(conv(f"extra_{k}/expand", "expand", h, h, c, mid, 1, 1))
        if lite:
            layers.append(conv(f"extra_{k}/depthwise", "depthwise", h, h, mid, mid, 3, 2, depthwise=True))
            h = layers[-1].out_shape[0]
            layers.append(conv(f"extra_{k}/project", "project", h, h, mid, out, 1, 1))
        else:
            layers.append(conv(f"extra_{k}/conv", "conv", h, h, mid, out, 3, 2))
            h = layers[-1].out_shape[0]
        c = out
    for m, (size, channels, per_location) in enumerate(
        zip(sizes, feature_channels(arch), anchors_lib.anchors_per_location())
    ):
        for kind, code in (("box", 4), ("class", num_slots)):
            scope = f"{kind}_predictor_{m}"
            out = per_location * code
            if lite:
                layers.append(
                    conv(f"{scope}/depthwise", "depthwise", size, size, channels, channels, 3, 1, True)
                )
                layers.append(
                    conv(f"{scope}/conv", "predictor", size, size, channels, out, 1, 1, bn=False, bias=True)
                )
            else:
                layers.append(
                    conv(f"{scope}/conv", "predictor", size, size, channels, out, 3, 1, bn=False, bias=True)
                )
    return layers


def count(
    arch: Architecture, resolution: int, num_classes: int, head_type: str = "ssdlite"
) -> tuple[accounting.Counts, accounting.Counts]:
    """`(whole detector, head alone)` for `num_classes` foreground classes (plus background)."""
    backbone = accounting.count(arch, resolution)
    head = head_layers(arch, resolution, num_classes + 1, head_type)
    return backbone.extended(head), accounting.Counts(resolution=resolution, layers=tuple(head))


# COCO's 80 labelled classes (TFDS `coco/2017`), the paper's Tables 5 and 6 setting.
DEFAULT_NUM_CLASSES = 80
DEFAULT_RESOLUTION = 320  # the paper's input size (TF's sample config uses 300)
__all__ = ["DEFAULT_NUM_CLASSES", "DEFAULT_RESOLUTION", "HEAD_TYPES", "count", "extra_info", "head_layers"]


def extra_info(resolution: int) -> dict:
    """What `mnv2 info --task detection` adds: the anchor count and the six map sizes."""
    return {
        "anchors": anchors_lib.num_anchors(resolution),
        "feature_maps": list(anchors_lib.feature_map_sizes(resolution)),
    }
