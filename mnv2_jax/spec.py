"""The MobileNetV2 architecture as plain data: the one source of truth.

Everything that needs to know the network's layers -- the Flax module
(`mnv2_jax.models.mobilenet_v2`), the analytic accounting (`mnv2 info`), the memory analysis
(`mnv2 memory`), sweep listings and weight importers -- reads the list of
layers that `build_architecture` derives from the paper's Table 2 and the
sweep settings. This module imports nothing heavy (no JAX), so command-line
answers that only need the architecture stay instant.

Conventions (TF-Slim's `mobilenet_v2.py`, which produced the published
checkpoints; Keras' `MobileNetV2` gives identical channel counts for every
alpha it offers):

* every channel count is `make_divisible(c * width)`: rounded to the nearest
  multiple of 8, never below 8 and never more than 10% below `c * width`;
* the last 1x1 conv keeps 1280 channels for width < 1 and scales above;
* a block's expanded width is `make_divisible(in_channels * t)`, so
  non-integer expansion ratios work; the expansion conv exists only when the
  expanded width differs from the input width (the first block, t=1, has none);
* output stride: once the running stride reaches `output_stride`, later
  strides become 1 and the depthwise convs dilate instead (atrous), exactly as
  TF-Slim's `mobilenet_base(output_stride=...)`.

Residual variants (`residual`, Figure 6b of the paper), wired per block that
has stride 1 and equal input and output channels (the blocks that carry the
paper's shortcut):

* ``bottleneck`` (paper): ``y = x + project(dw(expand(x)))``, the shortcut joins
  the thin bottleneck tensors;
* ``expansion``: the shortcut joins the expanded tensors instead, around the
  depthwise conv: ``e = expand(x); y = project(e + dw(e))`` -- both ends are
  t*k wide, post-activation; there is no shortcut at the bottleneck. A block
  with no expansion conv (the first) has no shortcut either way;
* ``none``: no shortcuts at all.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

# Table 2 of the paper: (t, c, n, s) per row after the stem.
TABLE2: tuple[tuple[float, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
NUM_STAGES = len(TABLE2)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
MIN_RESOLUTION = 32

BOTTLENECK_ACTIVATIONS = ("linear", "relu6")
RESIDUALS = ("bottleneck", "expansion", "none")
OUTPUT_STRIDES = (8, 16, 32)
PAPER_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
PAPER_RESOLUTIONS = (96, 128, 160, 192, 224)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round `value` to the nearest multiple of `divisor`, never below
    `min_value` (default `divisor`) and never more than 10% down."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """A regular convolution followed by batch norm (and ReLU6 if `relu6`)."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    relu6: bool = True


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One inverted residual block (Table 1)."""

    index: int  # 0..16 in the full network
    stage: int  # row of Table 2, 0..6
    in_channels: int
    expanded_channels: int
    out_channels: int
    stride: int  # stride of the depthwise conv (1 once output_stride is reached)
    dilation: int  # dilation of the depthwise conv (atrous)
    expansion: float  # the ratio t asked for
    bottleneck_activation: str  # 'linear' (paper) or 'relu6'
    shortcut: str | None  # 'bottleneck', 'expansion' or None

    @property
    def name(self) -> str:
        return f"block_{self.index}"

    @property
    def has_expansion(self) -> bool:
        return self.expanded_channels != self.in_channels


@dataclasses.dataclass(frozen=True)
class Architecture:
    """The whole network as data: stem, blocks, head conv and classifier."""

    width: float
    expansion: float | tuple[float, ...]
    bottleneck_activation: str
    residual: str
    output_stride: int | None
    num_classes: int
    max_repeats: int | None
    stem: ConvSpec
    blocks: tuple[BlockSpec, ...]
    head: ConvSpec

    @property
    def feature_channels(self) -> int:
        return self.head.out_channels

    def layers(self) -> list[ConvSpec | BlockSpec]:
        return [self.stem, *self.blocks, self.head]


def tap_channels(arch: Architecture) -> dict[str, int]:
    """Every feature the backbone can hand to a head, with its channel count, in network order:
    `stem`, `block_{i}/expansion` (blocks with an expansion conv), `block_{i}`, `head`,
    `pre_logits`. A head reads its input widths from here."""
    out = {"stem": arch.stem.out_channels}
    for block in arch.blocks:
        if block.has_expansion:
            out[f"{block.name}/expansion"] = block.expanded_channels
        out[block.name] = block.out_channels
    out["head"] = arch.head.out_channels
    out["pre_logits"] = arch.head.out_channels
    return out


def tap_names(arch: Architecture) -> tuple[str, ...]:
    return tuple(tap_channels(arch))


def stage_expansions(expansion: float | Sequence[float]) -> tuple[float, ...]:
    """Per-row expansion ratios: a scalar applies to rows 2..7 (the first row
    keeps t=1, as in the paper); a sequence gives all 7 rows of Table 2."""
    if isinstance(expansion, (int, float)) and not isinstance(expansion, bool):
        t = float(expansion)
        _check_expansion("expansion", t)
        return (1.0,) + (t,) * (NUM_STAGES - 1)
    ratios = tuple(float(t) for t in expansion)
    if len(ratios) != NUM_STAGES:
        raise ValueError(
            f"expansion: a per-stage list needs one ratio per row of Table 2 "
            f"({NUM_STAGES} values), got {len(ratios)}: {list(ratios)}"
        )
    for i, t in enumerate(ratios):
        _check_expansion(f"expansion[{i}]", t)
    return ratios


def _check_expansion(name: str, t: float) -> None:
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"{name}: the expansion ratio must be a positive number, got {t!r}")


def validate(
    *,
    width: float = 1.0,
    resolution: int | None = None,
    bottleneck_activation: str = "linear",
    residual: str = "bottleneck",
    output_stride: int | None = None,
    num_classes: int = 1000,
    max_repeats: int | None = None,
) -> None:
    """Raise ValueError naming the offending argument and what is allowed."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"width: the width multiplier must be a number > 0, got {width!r}")
    if resolution is not None and (
        isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < MIN_RESOLUTION
    ):
        raise ValueError(
            f"resolution: must be an integer >= {MIN_RESOLUTION} (the paper uses "
            f"{', '.join(map(str, PAPER_RESOLUTIONS))}), got {resolution!r}"
        )
    if bottleneck_activation not in BOTTLENECK_ACTIVATIONS:
        raise ValueError(
            f"bottleneck_activation: must be one of {BOTTLENECK_ACTIVATIONS}, got {bottleneck_activation!r}"
        )
    if residual not in RESIDUALS:
        raise ValueError(f"residual: must be one of {RESIDUALS}, got {residual!r}")
    if output_stride is not None and output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride: must be None or one of {OUTPUT_STRIDES}, got {output_stride!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes: must be an integer >= 0 (0 = no classifier), got {num_classes!r}")
    if max_repeats is not None and (not isinstance(max_repeats, int) or max_repeats < 1):
        raise ValueError(f"max_repeats: must be None (Table 2) or an integer >= 1, got {max_repeats!r}")


def build_architecture(
    width: float = 1.0,
    expansion: float | Sequence[float] = 6,
    bottleneck_activation: str = "linear",
    residual: str = "bottleneck",
    output_stride: int | None = None,
    num_classes: int = 1000,
    max_repeats: int | None = None,
) -> Architecture:
    """Derive every layer's channels, stride, dilation and shortcut.

    `max_repeats` caps the blocks per row of Table 2 (a test-only shrink; the
    default None is the paper's network). `num_classes=0` drops the classifier.
    """
    validate(
        width=width,
        bottleneck_activation=bottleneck_activation,
        residual=residual,
        output_stride=output_stride,
        num_classes=num_classes,
        max_repeats=max_repeats,
    )
    ratios = stage_expansions(expansion)

    current_stride, rate = 1, 1

    def atrous(stride: int) -> tuple[int, int]:
        # TF-Slim's rule: past the target output stride, trade stride for rate.
        nonlocal current_stride, rate
        if output_stride is not None and current_stride == output_stride:
            layer_stride, layer_rate = 1, rate
            rate *= stride
        else:
            layer_stride, layer_rate = stride, 1
            current_stride *= stride
        return layer_stride, layer_rate

    stem_channels = make_divisible(STEM_CHANNELS * width)
    stem_stride, _ = atrous(2)
    stem = ConvSpec("stem", 3, stem_channels, 3, stem_stride)

    blocks = []
    in_channels = stem_channels
    for stage, ((_, c, n, s), t) in enumerate(zip(TABLE2, ratios)):
        out_channels = make_divisible(c * width)
        repeats = n if max_repeats is None else min(n, max_repeats)
        for i in range(repeats):
            stride, dilation = atrous(s if i == 0 else 1)
            expanded = make_divisible(in_channels * t)
            identity = stride == 1 and in_channels == out_channels
            shortcut = None
            if identity and residual == "bottleneck":
                shortcut = "bottleneck"
            elif identity and residual == "expansion" and expanded != in_channels:
                shortcut = "expansion"
            blocks.append(
                BlockSpec(
                    index=len(blocks),
                    stage=stage,
                    in_channels=in_channels,
                    expanded_channels=expanded,
                    out_channels=out_channels,
                    stride=stride,
                    dilation=dilation,
                    expansion=t,
                    bottleneck_activation=bottleneck_activation,
                    shortcut=shortcut,
                )
            )
            in_channels = out_channels

    head_channels = make_divisible(HEAD_CHANNELS * width) if width > 1.0 else HEAD_CHANNELS
    head = ConvSpec("head", in_channels, head_channels, 1, 1)
    expansion_key: float | tuple[float, ...] = (
        float(expansion) if isinstance(expansion, (int, float)) else tuple(ratios)
    )
    return Architecture(
        width=float(width),
        expansion=expansion_key,
        bottleneck_activation=bottleneck_activation,
        residual=residual,
        output_stride=output_stride,
        num_classes=num_classes,
        max_repeats=max_repeats,
        stem=stem,
        blocks=tuple(blocks),
        head=head,
    )


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF's 'SAME' padding along one axis: the extra pixel goes after (bottom/right)."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def output_size(size: int, stride: int) -> int:
    """Spatial size after a 'SAME' conv with this stride."""
    return -(-size // stride)
