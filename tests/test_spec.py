"""The architecture as data (`mnv2_jax.spec`): Table 2, the width rounding rules, output stride,
the residual ablations and TF 'SAME' padding, checked against hand-worked values and the published
rules of the reference implementations (TF-Slim `mobilenet_v2.py`, Keras `MobileNetV2`)."""

from __future__ import annotations

import math

import pytest

from mnv2_jax import spec
from mnv2_jax.spec import build_architecture, make_divisible, same_padding


# ----------------------------------------------------------------------------- make_divisible
@pytest.mark.parametrize(
    "value, expected",
    [
        (32, 32),  # already a multiple of 8
        (44.8, 48),  # 32 * 1.4: nearest multiple is 48
        (12, 16),  # halfway rounds up
        (20, 24),
        (99, 96),  # nearest is 96, 3% down: allowed
        (100, 104),
        (8.4, 8),  # 24 * 0.35
        (5.6, 8),  # 16 * 0.35: never below 8
        (1, 8),
        (11.2, 16),  # 32 * 0.35: nearest is 8, 29% down -> bumped up one step
        (35.5, 32),  # 32 is 9.9% below 35.5: allowed
        (35.6, 40),  # 32 is 10.1% below 35.6: bumped to 40
        (1792, 1792),  # 1280 * 1.4
    ],
)
def test_make_divisible_hand_worked(value, expected):
    assert make_divisible(value) == expected


def test_make_divisible_rules_hold_everywhere():
    for i in range(1, 4000):
        value = i * 0.37
        r = make_divisible(value)
        assert r % 8 == 0 and r >= 8, value
        assert r >= 0.9 * value, value  # never more than 10% down
        assert r < value + 8 or r == 8, value  # at most one step up
        assert make_divisible(value, 4) % 4 == 0
    assert make_divisible(3, min_value=16) == 16


# ----------------------------------------------------------------------------- channels
def _keras_channels(alpha: float) -> tuple[int, list[int], int]:
    """Keras' MobileNetV2 rules: stem _make_divisible(32 * alpha), block filters
    _make_divisible(int(c * alpha)), head 1280 unless alpha > 1."""
    stem = make_divisible(32 * alpha)
    blocks = [make_divisible(int(c * alpha)) for _, c, n, _ in spec.TABLE2 for _ in range(n)]
    head = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    return stem, blocks, head


@pytest.mark.parametrize("width", spec.PAPER_WIDTHS)
def test_channels_follow_keras_rules(width):
    arch = build_architecture(width=width)
    stem, blocks, head = _keras_channels(width)
    assert arch.stem.out_channels == stem
    assert [b.out_channels for b in arch.blocks] == blocks
    assert arch.head.out_channels == head
    # Each block reads what the previous layer wrote, and expands it t times (t = 6 after block 0).
    previous = arch.stem.out_channels
    for b in arch.blocks:
        assert b.in_channels == previous
        t = 1 if b.index == 0 else 6
        assert b.expanded_channels == b.in_channels * t
        previous = b.out_channels
    assert arch.head.in_channels == previous


def test_channels_hand_worked():
    a = build_architecture(width=1.0)
    assert a.stem.out_channels == 32
    expected = [16] + [24] * 2 + [32] * 3 + [64] * 4 + [96] * 3 + [160] * 3 + [320]
    assert [b.out_channels for b in a.blocks] == expected
    assert a.head.out_channels == 1280
    assert a.blocks[0].expanded_channels == 32 and not a.blocks[0].has_expansion  # t=1: no 1x1 expansion
    assert a.blocks[1].expanded_channels == 96 and a.blocks[1].has_expansion
    assert a.blocks[16].expanded_channels == 960

    a = build_architecture(width=0.35)
    assert a.stem.out_channels == 16  # 11.2 -> 16 (10% rule)
    assert a.blocks[0].out_channels == 8  # Keras' 0.35: first block outputs 8 channels
    assert a.blocks[-1].out_channels == 112  # 320 * 0.35
    assert a.head.out_channels == 1280  # kept for width < 1

    a = build_architecture(width=1.4)
    assert a.stem.out_channels == 48
    assert a.blocks[-1].out_channels == 448
    assert a.head.out_channels == 1792  # scaled above 1

    assert build_architecture(width=1.3).head.out_channels == 1664
    assert build_architecture(width=0.75).head.out_channels == 1280


def test_table2_structure():
    a = build_architecture()
    assert len(a.blocks) == 17
    assert [b.index for b in a.blocks] == list(range(17))
    assert [b.name for b in a.blocks][:2] == ["block_0", "block_1"]
    assert [b.stage for b in a.blocks] == [0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6]
    assert [b.stride for b in a.blocks] == [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    assert all(b.dilation == 1 for b in a.blocks)
    assert a.stem.stride == 2 and a.stem.kernel == 3 and a.stem.in_channels == 3
    assert a.head.kernel == 1 and a.head.stride == 1
    assert [layer.name for layer in a.layers()] == ["stem"] + [f"block_{i}" for i in range(17)] + ["head"]
    # Running stride: 2 (stem) * 2^4 = 32.
    assert a.stem.stride * math.prod(b.stride for b in a.blocks) == 32
    assert all(b.bottleneck_activation == "linear" for b in a.blocks)
    assert a.feature_channels == 1280


def test_max_repeats_shrinks_every_row():
    a = build_architecture(max_repeats=2)
    assert [b.stage for b in a.blocks] == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    assert [b.stride for b in a.blocks] == [1, 2, 1, 2, 1, 2, 1, 1, 1, 2, 1, 1]
    assert len(build_architecture(max_repeats=1).blocks) == 7


# ----------------------------------------------------------------------------- output stride
def _strides_dilations(output_stride):
    a = build_architecture(output_stride=output_stride)
    return a.stem.stride, [(b.stride, b.dilation) for b in a.blocks]


def test_output_stride_32_is_the_plain_network():
    assert _strides_dilations(32) == _strides_dilations(None)


def test_output_stride_16():
    # Running stride after the stem and blocks 1, 3, 6 is 16; block 13 (stride 2 at
    # running stride 16) becomes stride 1 with rate 1, and the blocks after it dilate by 2.
    stem_stride, sd = _strides_dilations(16)
    assert stem_stride == 2
    expected = [(1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1), (2, 1)] + [(1, 1)] * 7 + [(1, 2)] * 3
    assert sd == expected


def test_output_stride_8():
    # Running stride 8 after block 3: block 6 loses its stride (rate 1, later 2); block 13
    # loses its stride at rate 2 (later 4).
    stem_stride, sd = _strides_dilations(8)
    assert stem_stride == 2
    expected = (
        [(1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1)] + [(1, 1)] + [(1, 2)] * 6 + [(1, 2)] + [(1, 4)] * 3
    )
    assert sd == expected
    a = build_architecture(output_stride=8)
    assert a.stem.stride * math.prod(b.stride for b in a.blocks) == 8


# ----------------------------------------------------------------------------- expansion
def test_scalar_expansion_applies_after_the_first_row():
    assert spec.stage_expansions(6) == (1.0, 6.0, 6.0, 6.0, 6.0, 6.0, 6.0)
    a = build_architecture(expansion=4)
    assert a.blocks[0].expansion == 1.0 and not a.blocks[0].has_expansion
    assert all(b.expansion == 4.0 for b in a.blocks[1:])
    assert a.blocks[1].expanded_channels == 64  # 16 * 4


def test_per_stage_expansion_with_non_integer_ratios():
    ratios = (1, 2.5, 3, 4.5, 6, 6, 10)
    a = build_architecture(expansion=ratios)
    assert a.expansion == tuple(float(t) for t in ratios)
    for b in a.blocks:
        assert b.expansion == ratios[b.stage]
        assert b.expanded_channels == make_divisible(b.in_channels * ratios[b.stage])
    assert a.blocks[1].expanded_channels == 40  # 16 * 2.5
    assert a.blocks[3].expanded_channels == 72  # 24 * 3
    # A ratio below 1 is a classical (narrowing) residual block.
    a = build_architecture(expansion=0.5)
    assert a.blocks[2].expanded_channels == 16 and a.blocks[2].has_expansion  # 24 * 0.5 -> 16 (10% rule)


@pytest.mark.parametrize(
    "expansion, name",
    [
        ((6, 6, 6), "expansion"),
        ((1,) + (6,) * 7, "expansion"),
        ([], "expansion"),
        (0, "expansion"),
        (-2.0, "expansion"),
        (float("nan"), "expansion"),
        (float("inf"), "expansion"),
        ((1, 6, 6, 0, 6, 6, 6), "expansion[3]"),
        ((1, 6, 6, 6, 6, 6, -1.5), "expansion[6]"),
    ],
)
def test_bad_expansion_raises_naming_the_argument(expansion, name):
    with pytest.raises(ValueError, match=r"^" + name.replace("[", r"\[").replace("]", r"\]")):
        build_architecture(expansion=expansion)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(width=0), "width"),
        (dict(width=-0.5), "width"),
        (dict(width="1.0"), "width"),
        (dict(bottleneck_activation="relu"), "bottleneck_activation"),
        (dict(residual="identity"), "residual"),
        (dict(output_stride=4), "output_stride"),
        (dict(num_classes=-1), "num_classes"),
        (dict(num_classes=10.0), "num_classes"),
        (dict(max_repeats=0), "max_repeats"),
    ],
)
def test_bad_settings_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        build_architecture(**kwargs)


def test_validate_resolution():
    spec.validate(resolution=32)
    for bad in (31, 0, 224.0, True):
        with pytest.raises(ValueError, match="^resolution:"):
            spec.validate(resolution=bad)


# ----------------------------------------------------------------------------- shortcuts
# Blocks with stride 1 and equal in/out channels in the full network.
IDENTITY_BLOCKS = [2, 4, 5, 7, 8, 9, 11, 12, 14, 15]


def _shortcuts(**kwargs):
    return {b.index: b.shortcut for b in build_architecture(**kwargs).blocks if b.shortcut}


def test_shortcut_placement_bottleneck():
    assert _shortcuts() == {i: "bottleneck" for i in IDENTITY_BLOCKS}
    # Width changes no identity: every block of a row shares its channel count.
    for width in spec.PAPER_WIDTHS:
        assert sorted(_shortcuts(width=width)) == IDENTITY_BLOCKS


def test_shortcut_placement_expansion():
    assert _shortcuts(residual="expansion") == {i: "expansion" for i in IDENTITY_BLOCKS}
    # No expansion conv (t = 1 everywhere): nothing to join around the depthwise conv.
    assert _shortcuts(residual="expansion", expansion=1) == {}
    assert _shortcuts(residual="bottleneck", expansion=1) == {i: "bottleneck" for i in IDENTITY_BLOCKS}


def test_shortcut_placement_none():
    assert _shortcuts(residual="none") == {}


def test_shortcuts_follow_output_stride():
    # Atrous blocks keep stride 1, so their shortcut placement is unchanged; block 13
    # (96 -> 160 channels) gains none even though its stride becomes 1.
    assert sorted(_shortcuts(output_stride=8)) == IDENTITY_BLOCKS
    assert sorted(_shortcuts(output_stride=16)) == IDENTITY_BLOCKS


def test_block0_shortcut_only_when_channels_match():
    assert build_architecture(width=0.35).blocks[0].shortcut is None  # stem 16 -> block 0 out 8
    # Width 0.1: stem and block 0 both round up to 8 channels, so block 0 is an identity block.
    a = build_architecture(width=0.1)
    assert a.stem.out_channels == a.blocks[0].out_channels == 8
    assert a.blocks[0].shortcut == "bottleneck"
    # ... but it has no expansion conv, so the 'expansion' variant gives it no shortcut.
    assert build_architecture(width=0.1, residual="expansion").blocks[0].shortcut is None


# ----------------------------------------------------------------------------- padding
@pytest.mark.parametrize(
    "size, kernel, stride, dilation, expected",
    [
        (7, 3, 1, 1, (1, 1)),
        (8, 3, 1, 1, (1, 1)),
        (8, 3, 2, 1, (0, 1)),  # even input, stride 2: only bottom/right
        (7, 3, 2, 1, (1, 1)),  # odd input, stride 2: symmetric
        (224, 3, 2, 1, (0, 1)),
        (9, 3, 1, 2, (2, 2)),  # effective kernel 5
        (8, 3, 2, 2, (1, 2)),  # out 4: total (4-1)*2 + 5 - 8 = 3
        (9, 3, 2, 2, (2, 2)),
        (8, 1, 1, 1, (0, 0)),
        (8, 1, 2, 1, (0, 0)),
        (5, 5, 2, 1, (2, 2)),
        (6, 5, 2, 1, (1, 2)),
        (2, 3, 1, 4, (4, 4)),  # effective kernel 9 on a 2-pixel map
    ],
)
def test_same_padding(size, kernel, stride, dilation, expected):
    assert same_padding(size, kernel, stride, dilation) == expected
    before, after = expected
    out = spec.output_size(size, stride)
    assert out == math.ceil(size / stride)
    # The padded input holds the windows of `out` outputs and no more than the kernel needs.
    needed = (out - 1) * stride + (kernel - 1) * dilation + 1
    assert size + before + after == needed if before + after else size >= needed
