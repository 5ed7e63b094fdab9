"""The detection head's layers as data (no JAX): which backbone features it reads and the
channels of its extra layers. The Flax head (`head.py`) and the accounting (`counts.py`) both
read them, so the counted network is the one that trains.
"""

from __future__ import annotations

from mnv2_jax.spec import Architecture

HEAD_TYPES = ("ssdlite", "ssd")
EXTRA_DEPTHS = (512, 256, 256, 128)
MIN_DEPTH = 16
# The row of Table 2 whose first block's expansion is the first feature map (160 channels,
# TF-Slim's `layer_15/expansion_output`, here `block_13/expansion`).
FIRST_MAP_STAGE = 5


def depth_fn(depth: float, width: float) -> int:
    """TF's `depth_fn`: `max(int(depth * width), 16)` (plain `int`, not the backbone's rounding to 8)."""
    return max(int(depth * width), MIN_DEPTH)


def extra_depths(width: float) -> tuple[tuple[int, int], ...]:
    """`(mid, out)` channels of the four extra layers: (256, 512), (128, 256), (128, 256), (64, 128) at 1.0."""
    return tuple((depth_fn(d / 2, width), depth_fn(d, width)) for d in EXTRA_DEPTHS)


def check_head_type(head_type: str) -> None:
    if head_type not in HEAD_TYPES:
        raise ValueError(f"detection.head: must be one of {HEAD_TYPES}, got {head_type!r}")


def feature_taps(arch: Architecture) -> tuple[str, str]:
    """The backbone features the head reads: the first stride-16 expansion and the `head` conv."""
    if arch.output_stride is not None:
        raise ValueError(
            "output_stride: the detection head needs the backbone at its full stride 32 (None), "
            f"got {arch.output_stride}"
        )
    block = next(b for b in arch.blocks if b.stage == FIRST_MAP_STAGE)
    if not block.has_expansion:
        raise ValueError(
            f"expansion: the detection head reads the expansion of {block.name} (the first 160-channel "
            "block), which an expansion ratio of 1 in that row removes"
        )
    return f"{block.name}/expansion", "head"


def feature_channels(arch: Architecture) -> tuple[int, ...]:
    """Channels of the six maps: 576, 1280, 512, 256, 256, 128 at width 1.0."""
    feature_taps(arch)
    first = next(b for b in arch.blocks if b.stage == FIRST_MAP_STAGE)
    return (first.expanded_channels, arch.head.out_channels, *(d for _, d in extra_depths(arch.width)))
