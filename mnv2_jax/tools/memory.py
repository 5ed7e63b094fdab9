"""Memory-efficient inference (Section 5.1 of the paper) and its Table 3.

Why it works. An inverted residual block computes F(x) = B(N(A x)): A the 1x1
expansion (+ folded bias, ReLU6), N the depthwise conv (+ bias, ReLU6), B the
linear 1x1 projection. A, N and the activations act on each of the t*k inner
channels independently, so splitting them into S groups gives, exactly,
``F(x) = sum_i B_i(N_i(A_i x)) + b_B`` -- the projection's folded bias added
once, then the ReLU6 of the bottleneck ablation if any, then the shortcut.
Only one group's slice of the expanded tensor exists at a time; the thin
bottleneck tensors (input, accumulator) are the only whole ones. Batch norm is
folded into the convs first (`mnv2_jax.models.folded`): inference only.
`split_apply(arch, folded_params, x, split)` runs the network so, with S per
block (S=1: the standard block, `mnv2_jax.models.folded.inverted_residual`);
a group's term is that module's `block_inner` on a slice of the weights, and
the sum goes through its `block_output`.

Two more layers get the treatment when their neighbour block is split:

* First-layer trick (Table 3's caption). Block 0 has t=1: its "expanded"
  tensor is the stem's 32-channel 112x112 output. The stem conv and block 0
  run together in S strips of output rows (plus the one-row halo the 3x3
  depthwise needs), so the 32x112x112 tensor never exists whole. Row strips,
  not channel groups: an 8-channel slice of the stem conv misses XLA:CPU's
  fast convolution path and runs ~4x slower per channel. Needs block 0 without
  expansion conv, shortcut, stride or dilation (Table 2's first row);
  otherwise the stem runs whole and block 0 is split by channels.
* Head + pooling. The last 1x1 conv (1280 channels at 7x7) feeds only the
  global average pool, so it runs in S groups of output channels, each pooled
  at once (the last block's S). Table 3 likewise lists 1280 channels at 1x1.

What keeps the saving under XLA (measured at 1.0/224, batch 1, CPU):

1. A loop. Written as a Python loop, the S groups are independent
   computations; XLA's scheduler interleaves them and several groups' slices
   are alive at once: unrolled, S=4 needs *more* temporary memory than the
   standard model (15.4 MB vs 9.7 MB; 3.5 MB in a loop). Each split block is
   a `lax.fori_loop`
   (an XLA while loop) carrying the accumulator: a while body runs one
   iteration at a time and reuses its buffers.
2. An accumulator that is not created early. A `jnp.zeros` initial carry has
   no operands; XLA hoists all seventeen of them (and the copies the while
   loops make) to the start of the program, where they stay alive: 4.7 MB
   instead of 3.5 MB at S=4. `_zeros_after` ties them to the block's input.
3. Weight slices that are not fused. Slicing a group's weights at the traced
   loop index (`lax.dynamic_slice`) lets XLA fuse the slice into the large
   elementwise loops (depthwise taps, bias + ReLU6), which then run ~5x
   slower. The slices come out of a `lax.switch` over static slices instead:
   one copy of the group's weights per iteration (the small ones packed into
   one vector, to keep the number of XLA ops, each ~5 us to launch, down).
4. Group widths that suit the vector unit: ceil(C/S) rounded up to a multiple
   of 8 where S groups still cover the channels (`group_width`).

Unequal groups: every group has `group_width` channels; the last starts at
C - width (clamped) and the channels it shares with the group before get
zero projection rows, so the sum stays exact.

Where to split: the peak is a maximum over layers, so splitting a
low-resolution block that is far below it only adds loop overhead (about
50 us per group on this CPU) and a copy of its weight slices, which at low
resolution can outweigh the activations saved. `plan_split` keeps S where
it sets the peak and splits other blocks only as much as needed to stay
under it (estimates from `working_sets`).

Table 3 (analytic). `analytic_table` derives for each spatial size the largest
number of channels, and the memory (16-bit activations, batch 1), that must be
materialised there, from the architecture spec and `accounting.count`'s
per-layer shapes, by this rule:

* the network is a chain of operations: stem + block 0 (fused by the
  first-layer trick; without it, stem and block 0), each other bottleneck
  block as one operation, head + pooling, classifier. A block's inner
  expanded tensor is not counted (it is never materialised whole), nor are
  weights;
* an operation needs its input and its output at once;
* the row for size r: the maximum over operations of the channels of that
  operation's tensors at size r (input + output when both are at r, only the
  one that is for a stride-2 operation), times r*r*2 bytes; the max is the
  largest row. kB = 1000 bytes (the paper's "Kb": 64 ch x 112^2 x 2 B =
  1,605,632 B is its "1600K").

The rows also record `single`, the largest one tensor at r, which reproduces
the paper's MobileNetV1 column exactly. The paper's table is approximate;
`paper_notes` explains each cell where it differs from the rule.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mnv2_jax.spec import Architecture, BlockSpec, ConvSpec, output_size, same_padding

SPLIT_LOOPS = ("while", "unrolled")
DTYPES = ("float32", "bfloat16")
BYTES_16BIT = 2
KB = 1000
ALIGN = 8  # channels: 8 float32 lanes of AVX2

# The paper's Table 3 at 1.0/224: (channels, kB) per spatial size, and the maxima.
PAPER_TABLE3: dict[str, dict[int, tuple[int, int]]] = {
    "MobileNetV1": {
        112: (64, 1600),
        56: (128, 800),
        28: (256, 400),
        14: (512, 200),
        7: (1024, 100),
        1: (1024, 2),
    },
    "MobileNetV2": {112: (16, 400), 56: (32, 200), 28: (64, 100), 14: (160, 62), 7: (320, 32), 1: (1280, 2)},
}
PAPER_MAX_KB = {"MobileNetV1": 1600, "MobileNetV2": 400, "ShuffleNet (2x, g=3)": 600}

# MobileNetV1 (Howard et al. 2017, Table 1): 3x3 conv 32 stride 2, then depthwise-separable
# layers (3x3 depthwise with this stride, 1x1 pointwise to this many channels).
V1_STEM = 32
V1_LAYERS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *((512, 1),) * 5,
    (1024, 2),
    (1024, 1),
)


# --- Split evaluation ----------------------------------------------------------------------------


def normalize_split(arch: Architecture, split: int | Sequence[int]) -> tuple[int, ...]:
    """One group count per block; raises ValueError naming `split` for anything unusable.

    An int applies to every block (1 = the standard block); a sequence gives
    one per block. A block's S may not exceed its inner (expanded) channels:
    every group needs a channel of its own.
    """
    n = len(arch.blocks)
    usage = f"an integer >= 1 or a sequence of {n} of them (one per block)"
    if isinstance(split, bool):
        raise ValueError(f"split: must be {usage}, got {split!r}")
    if isinstance(split, (int, np.integer)):
        values: tuple = (int(split),) * n
    else:
        try:
            values = tuple(split)
        except TypeError:
            raise ValueError(f"split: must be {usage}, got {split!r}") from None
        if len(values) != n:
            raise ValueError(
                f"split: a per-block sequence needs one value per block ({n}), got {len(values)}"
            )
    for block, s in zip(arch.blocks, values):
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"split: each group count must be an integer >= 1, got {s!r} for {block.name}")
        if s > block.expanded_channels:
            raise ValueError(
                f"split: {block.name} has {block.expanded_channels} inner channels; "
                f"it cannot be split into {s} groups"
            )
    return tuple(int(s) for s in values)


def group_width(channels: int, groups: int, align: int = ALIGN) -> int:
    """Channels per group: ceil(channels / groups), rounded up to a multiple of `align` when
    `groups` groups of that width still each start below `channels` (else unrounded).

    Why: XLA:CPU vectorises over the channel axis; 29- or 20-channel slices make
    the split model ~15% slower than 32 or 24 (S=5 at 1.0/224).
    """
    width = -(-channels // groups)
    aligned = -(-width // align) * align
    return aligned if aligned <= channels and (groups - 1) * aligned < channels else width


def _group_start(i, width: int, total: int):
    """Where group i starts: clamped so that the slice stays in range."""
    if isinstance(i, int):
        return min(i * width, total - width)
    import jax.numpy as jnp

    return jnp.minimum(i * width, total - width)


def _fuses_stem(arch: Architecture, splits: tuple[int, ...]) -> bool:
    """Whether the first-layer trick applies: block 0 split, t=1, no shortcut, stride and dilation 1."""
    b0 = arch.blocks[0]
    return splits[0] > 1 and not b0.has_expansion and b0.shortcut is None and b0.stride == b0.dilation == 1


def _zeros_after(x, shape: tuple[int, ...]):
    """Zeros of `shape` that XLA cannot create before `x` exists: a split block's accumulator.

    A plain `jnp.zeros` has no operands, and XLA's scheduler hoists it -- with
    the copy each while loop makes of its initial carry -- to the start of the
    program, so every split block's accumulator stays alive for the whole
    network (at 1.0/224, S=4: 4.7 MB instead of 3.5 MB). Adding
    min(|x[0]|, 0) -- zero for every number, inf included; a NaN spreads over
    the block's output, and the global pool gives NaN logits either way --
    ties the zeros to the block's input with float arithmetic that XLA does
    not simplify away.
    """
    import jax.numpy as jnp

    anchor = jnp.minimum(jnp.abs(x.reshape(-1)[0]), 0).astype(x.dtype)
    return jnp.zeros(shape, x.dtype) + anchor


def _split_block(
    x, p: dict, block: BlockSpec, groups: int, *, loop: str, depthwise_impl: str, pointwise_impl: str
):
    """One bottleneck block as a sum over `groups` slices of its inner channels."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from mnv2_jax.models import folded
    from mnv2_jax.nn import layers

    inner = block.expanded_channels
    width = group_width(inner, groups)
    kproj = p["project"]["kernel"]

    def slices(j: int) -> dict:
        """Group j's weights (and, without an expansion conv, input channels): static slices."""
        start = _group_start(j, width, inner)

        def cut(a, axis: int):
            return lax.slice_in_dim(a, start, start + width, axis=axis)

        w = {
            "dw": cut(p["depthwise"]["kernel"], 3),
            "dwb": cut(p["depthwise"]["bias"], 0),
            "proj": cut(kproj, 2),
        }
        if start < j * width:  # clamped: rows for the channels the group before computed are zeroed
            fresh = (np.arange(start, start + width) >= j * width).astype(np.float32)
            w["proj"] = w["proj"] * jnp.asarray(fresh, kproj.dtype)[:, None]
        if block.has_expansion:
            w["in"], w["inb"] = cut(p["expand"]["kernel"], 3), cut(p["expand"]["bias"], 0)
        else:
            w["x"] = cut(x, 3)
        return w

    # The small slices (depthwise kernel, biases) are read by elementwise loops: packed into one
    # vector, one copy. The large ones (the 1x1 kernels, or input channels) feed dots or the
    # depthwise conv as whole arrays: each its own output, also one copy.
    small_keys = ("dw", "dwb", "inb")
    shapes = jax.eval_shape(lambda: slices(0))

    def packed(j: int) -> dict:
        w = slices(j)
        out = {k: v for k, v in w.items() if k not in small_keys}
        out["small"] = jnp.concatenate([w[k].reshape(-1) for k in small_keys if k in w])
        return out

    def unpack(out: dict) -> dict:
        w, offset = {k: v for k, v in out.items() if k != "small"}, 0
        for k in small_keys:
            if k in shapes:
                w[k] = out["small"][offset : offset + shapes[k].size].reshape(shapes[k].shape)
                offset += shapes[k].size
        return w

    def term(i):
        if isinstance(i, int):  # unrolled
            w = slices(i)
        else:  # one copy of this group's slices, through a switch (module docstring, point 3)
            w = unpack(lax.switch(i, [lambda j=j: packed(j) for j in range(groups)]))
        group = {"depthwise": {"kernel": w["dw"], "bias": w["dwb"]}}
        if block.has_expansion:
            group["expand"] = {"kernel": w["in"], "bias": w["inb"]}
        d = folded.block_inner(
            x if block.has_expansion else w["x"],
            group,
            block,
            depthwise_impl=depthwise_impl,
            pointwise_impl=pointwise_impl,
        )
        return layers.pointwise_conv(d, w["proj"], pointwise_impl)

    acc = _zeros_after(x, jax.eval_shape(lambda: term(0)).shape)
    if loop == "while":
        acc = lax.fori_loop(0, groups, lambda i, acc: acc + term(i), acc)
    else:
        for i in range(groups):
            acc = acc + term(i)
    return folded.block_output(acc, p["project"]["bias"], block, x)


def _first_layer_strips(
    x,
    stem_p: dict,
    stem: ConvSpec,
    p: dict,
    block: BlockSpec,
    strips: int,
    *,
    loop: str,
    depthwise_impl: str,
    pointwise_impl: str,
):
    """Stem conv + block 0 (t=1, stride 1, no shortcut) in `strips` strips of output rows.

    Stem output row j reads padded image rows j*s .. j*s + k - 1. A strip of
    `rows` output rows needs stem rows start-1 .. start+rows (the depthwise
    halo); the halo rows outside the image are the depthwise's zero padding,
    so they are masked to zero rather than computed from the image's padding.
    Strip starts are clamped like channel groups; an overlapping strip
    rewrites the same rows with the same values.
    """
    import jax.numpy as jnp
    from jax import lax

    from mnv2_jax.models import folded
    from mnv2_jax.nn import layers

    n, h, w, _ = x.shape
    k, s = stem.kernel, stem.stride
    h1, w1 = output_size(h, s), output_size(w, s)
    rows = -(-h1 // strips)
    (pt, pb), (pl, pr) = same_padding(h, k, s), same_padding(w, k, s)
    # `s` extra rows at the top and bottom, so that stem rows -1 and h1 (the halo) can be sliced too.
    image = jnp.pad(x, ((0, 0), (pt + s, pb + s), (pl, pr), (0, 0)))
    span = (rows + 1) * s + k

    def strip(start):
        window = lax.dynamic_slice_in_dim(image, start * s, span, axis=1)
        e = lax.conv_general_dilated(
            window, stem_p["kernel"], (s, s), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        e = layers.relu6(e + stem_p["bias"])
        j = start - 1 + jnp.arange(rows + 2)
        e = jnp.where(((j >= 0) & (j < h1))[None, :, None, None], e, 0).astype(e.dtype)
        # 'SAME' over rows+2 rows: output rows 1..rows read only rows inside the strip.
        d = layers.depthwise_conv(e, p["depthwise"]["kernel"], 1, 1, depthwise_impl)[:, 1 : rows + 1]
        d = layers.relu6(d + p["depthwise"]["bias"])
        projected = layers.pointwise_conv(d, p["project"]["kernel"], pointwise_impl)
        return folded.block_output(projected, p["project"]["bias"], block, None)  # no shortcut here

    def body(i, out):
        start = _group_start(i, rows, h1)
        return lax.dynamic_update_slice_in_dim(out, strip(start), start, axis=1)

    out = _zeros_after(x, (n, h1, w1, block.out_channels))
    if loop == "while":
        return lax.fori_loop(0, strips, body, out)
    for i in range(strips):
        out = body(i, out)
    return out


def _head_pool(x, p: dict, groups: int, *, loop: str, pointwise_impl: str):
    """Head 1x1 conv + ReLU6 + global average pool, in `groups` groups of output channels."""
    import jax.numpy as jnp
    from jax import lax

    from mnv2_jax.models import folded

    def pooled(kernel, bias):
        return folded.head_pool(x, {"kernel": kernel, "bias": bias}, pointwise_impl=pointwise_impl)

    if groups == 1:
        return pooled(p["kernel"], p["bias"])
    channels = p["kernel"].shape[-1]
    width = group_width(channels, groups)

    def slices(j: int) -> tuple:
        start = _group_start(j, width, channels)
        return lax.slice_in_dim(p["kernel"], start, start + width, axis=3), lax.slice_in_dim(
            p["bias"], start, start + width, axis=0
        )

    def body(i, out):
        # Weights through a switch, as in `_split_block`. A clamped group recomputes channels
        # the group before wrote: the same values, written again.
        kernel, bias = (
            slices(i) if isinstance(i, int) else lax.switch(i, [lambda j=j: slices(j) for j in range(groups)])
        )
        return lax.dynamic_update_slice_in_dim(
            out, pooled(kernel, bias), _group_start(i, width, channels), axis=1
        )

    out = jnp.zeros((x.shape[0], channels), jnp.float32)  # (batch, 1280): too small to matter
    if loop == "while":
        return lax.fori_loop(0, groups, body, out)
    for i in range(groups):
        out = body(i, out)
    return out


def split_apply(
    arch: Architecture,
    params: dict,
    x,
    split: int | Sequence[int] = 1,
    *,
    loop: str = "while",
    depthwise_impl: str = "auto",
    pointwise_impl: str = "auto",
):
    """The batch-norm-folded network with each block evaluated in `split` groups (Section 5.1).

    `params`: the folded tree of `mnv2_jax.models.folded.fold_batch_norm`
    (or `random_folded_params`). `split`: an int for every block or one per
    block (`plan_split` suggests one); S=1 everywhere is the standard folded
    model, `mnv2_jax.models.folded.folded_apply` with the same conv
    implementations. Computes in the
    dtype of `x` and `params`: cast both beforehand (a cast inside a jitted
    caller would materialise a copy of every weight). Returns logits, or the
    pooled features when `arch.num_classes == 0`. Jit it yourself; `arch`,
    `split` and the options are static. `loop='unrolled'` is the Python-loop
    version, kept to show why the loop matters.
    """
    from mnv2_jax.models import folded
    from mnv2_jax.nn import layers

    if loop not in SPLIT_LOOPS:
        raise ValueError(f"loop: must be one of {SPLIT_LOOPS}, got {loop!r}")
    impls = dict(
        depthwise_impl=layers.resolve_impl("depthwise", depthwise_impl),
        pointwise_impl=layers.resolve_impl("pointwise", pointwise_impl),
    )
    splits = normalize_split(arch, split)
    blocks = list(zip(arch.blocks, splits))
    if _fuses_stem(arch, splits):
        b0, s0 = blocks.pop(0)
        x = _first_layer_strips(x, params["stem"], arch.stem, params[b0.name], b0, s0, loop=loop, **impls)
    else:
        x = folded.stem(x, params["stem"], arch.stem)
    for block, s in blocks:
        if s == 1:
            x = folded.inverted_residual(x, params[block.name], block, **impls)
        else:
            x = _split_block(x, params[block.name], block, s, loop=loop, **impls)
    x = _head_pool(x, params["head"], splits[-1], loop=loop, pointwise_impl=impls["pointwise_impl"])
    if arch.num_classes:
        x = folded.classifier(x, params["classifier"])
    return x


def random_folded_params(arch: Architecture, seed: int = 0) -> dict:
    """Folded parameters (the tree and shapes of `mnv2_jax.models.folded.fold_batch_norm`'s) with
    random values.

    Memory and speed do not depend on the values, and building them directly
    skips compiling the module's init. He-normal kernels keep activations O(1),
    so ReLU6 is neither always off nor always saturated.
    """
    rng = np.random.default_rng(seed)

    def conv(kh: int, cin: int, cout: int) -> dict:
        kernel = rng.normal(0.0, math.sqrt(2.0 / (kh * kh * cin)), (kh, kh, cin, cout))
        return {"kernel": kernel.astype(np.float32), "bias": rng.normal(0.0, 0.1, cout).astype(np.float32)}

    params: dict[str, Any] = {"stem": conv(arch.stem.kernel, arch.stem.in_channels, arch.stem.out_channels)}
    for b in arch.blocks:
        p = {}
        if b.has_expansion:
            p["expand"] = conv(1, b.in_channels, b.expanded_channels)
        p["depthwise"] = conv(3, 1, b.expanded_channels)
        p["project"] = conv(1, b.expanded_channels, b.out_channels)
        params[b.name] = p
    params["head"] = conv(1, arch.head.in_channels, arch.head.out_channels)
    if arch.num_classes:
        c = arch.head.out_channels
        params["classifier"] = {
            "kernel": rng.normal(0.0, 0.01, (c, arch.num_classes)).astype(np.float32),
            "bias": np.zeros(arch.num_classes, np.float32),
        }
    return params


# --- Where to split: an estimate of each layer's working set -------------------------------------


def working_sets(
    arch: Architecture,
    resolution: int,
    split: int | Sequence[int],
    *,
    batch: int = 1,
    bytes_per_element: int = 4,
) -> list[tuple[str, int]]:
    """Estimated bytes each layer needs at once when run as `split_apply` would: (name, bytes).

    A model of what XLA:CPU kept alive (fitted to `memory_analysis` of single
    blocks, within ~10%), not a measurement: a layer's input and output, plus
    one group's slices -- the expansion's output and the zero-padded
    activation the shifted depthwise conv reads, and for a stride-1 block also
    the depthwise output (XLA fuses the centre tap to read the expansion's
    output, which then stays alive) -- and the copy of the group's weight
    slices, which is what dominates in low-resolution blocks. `plan_split`
    uses it.
    """
    splits = normalize_split(arch, split)
    h = w = resolution
    out: list[tuple[str, int, int]] = []  # (name, activation elements per image, weight elements)
    blocks = list(zip(arch.blocks, splits))
    h1, w1 = output_size(h, arch.stem.stride), output_size(w, arch.stem.stride)
    if _fuses_stem(arch, splits):
        b0, s0 = blocks.pop(0)
        rows = -(-h1 // s0)
        inner = (2 * (rows + 2) + rows) * w1 * b0.expanded_channels
        out.append((f"stem+{b0.name}", h * w * 3 + h1 * w1 * b0.out_channels + inner, 0))
    else:
        out.append(("stem", h * w * 3 + h1 * w1 * arch.stem.out_channels, 0))
    h, w = h1, w1
    for b, s in blocks:
        ho, wo = output_size(h, b.stride), output_size(w, b.stride)
        width = b.expanded_channels if s == 1 else group_width(b.expanded_channels, s)
        inner = h * w + (h + 2) * (w + 2) + (h * w if b.stride == 1 else 0)
        weights = 0 if s == 1 else width * ((b.in_channels if b.has_expansion else 0) + b.out_channels + 11)
        out.append((b.name, h * w * b.in_channels + ho * wo * b.out_channels + inner * width, weights))
        h, w = ho, wo
    c = arch.head.out_channels
    width = c if splits[-1] == 1 else group_width(c, splits[-1])
    weights = 0 if splits[-1] == 1 else width * (arch.head.in_channels + 1)
    out.append(("head+pool", h * w * (arch.head.in_channels + width) + c, weights))
    return [(name, (acts * batch + weights) * bytes_per_element) for name, acts, weights in out]


def plan_split(
    arch: Architecture, resolution: int, split: int, *, batch: int = 1, bytes_per_element: int = 4
) -> tuple[int, ...]:
    """Per-block group counts (at most `split` each) with the lowest estimated peak, each block
    split no more than it needs to stay under that peak.

    Why: the peak is a maximum over layers, and every group costs a loop
    iteration and a copy of its weight slices. Blocks at 14x14 and below sit
    far under the peak the 112x112 and 56x56 blocks set (splitting them cost
    ~15% throughput at 1.0/224, S=4, for nothing), and at low resolution
    their weight copies can outweigh the activations saved. Estimates from
    `working_sets`.
    """
    uniform = normalize_split(arch, split)
    n = len(uniform)

    def cost(i: int, s: int) -> int:
        """The estimated bytes of the layers block i's split decides, the other blocks whole."""
        trial = tuple(s if j == i else 1 for j in range(n))
        sets = dict(working_sets(arch, resolution, trial, batch=batch, bytes_per_element=bytes_per_element))
        name = arch.blocks[i].name
        keys = [k for k in sets if k == name or k.endswith("+" + name)]
        keys += ["stem"] if i == 0 and "stem" in sets else []
        keys += ["head+pool"] if i == n - 1 else []
        return max(sets[k] for k in keys)

    costs = [[cost(i, s) for s in range(1, uniform[i] + 1)] for i in range(n)]
    target = max(min(c) for c in costs)
    return tuple(next(s for s, c in enumerate(cs, start=1) if c <= target) for cs in costs)


# --- Table 3: the analytic memory ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Op:
    """An operation that needs its input and output materialised at once; shapes are (H, W, C)."""

    name: str
    input: tuple[int, int, int]
    output: tuple[int, int, int]


def v2_ops(arch: Architecture, resolution: int, first_layer_trick: bool = True) -> list[Op]:
    """MobileNetV2 as the chain of operations the Table 3 rule counts (module docstring).

    Shapes come from `accounting.count`, so they follow the spec exactly
    (width rounding, odd sizes, output stride).
    """
    from mnv2_jax import accounting

    layers = {layer.name: layer for layer in accounting.count(arch, resolution).layers}
    stem, b0 = layers["stem"], arch.blocks[0]
    fuse = first_layer_trick and not b0.has_expansion and b0.shortcut is None
    if fuse:
        ops = [Op(f"stem+{b0.name}", stem.in_shape, layers[f"{b0.name}/project"].out_shape)]
    else:
        ops = [Op("stem", stem.in_shape, stem.out_shape)]
    for b in arch.blocks[1:] if fuse else arch.blocks:
        first = layers[f"{b.name}/expand"] if b.has_expansion else layers[f"{b.name}/depthwise"]
        ops.append(Op(b.name, first.in_shape, layers[f"{b.name}/project"].out_shape))
    head = layers["head"]
    ops.append(Op("head+pool", head.in_shape, (1, 1, head.out_shape[2])))
    if arch.num_classes:
        ops.append(Op("classifier", (1, 1, head.out_shape[2]), (1, 1, arch.num_classes)))
    return ops


def v1_ops(width: float = 1.0, resolution: int = 224, num_classes: int = 1000) -> list[Op]:
    """MobileNetV1 as operations: depthwise and pointwise separately (V1 materialises both).

    Channels: TF-Slim's `max(int(c * width), 8)`.
    """

    def depth(c: int) -> int:
        return max(int(c * width), 8)

    h, c = output_size(resolution, 2), depth(V1_STEM)
    ops = [Op("conv", (resolution, resolution, 3), (h, h, c))]
    for i, (channels, stride) in enumerate(V1_LAYERS, start=1):
        ho = output_size(h, stride)
        ops.append(Op(f"dw_{i}", (h, h, c), (ho, ho, c)))
        ops.append(Op(f"pw_{i}", (ho, ho, c), (ho, ho, depth(channels))))
        h, c = ho, depth(channels)
    ops.append(Op("pool", (h, h, c), (1, 1, c)))
    if num_classes:
        ops.append(Op("classifier", (1, 1, c), (1, 1, num_classes)))
    return ops


def analytic_table(ops: Sequence[Op], bytes_per_element: int = BYTES_16BIT) -> dict:
    """Table 3 for a chain of operations: per spatial size, the largest channels and bytes (batch 1).

    Rows go from the largest size down; each names the operation that sets
    it (`op`, with the channels it adds up, `parts`) and the largest single
    tensor there (`single`). `op_peak_bytes`: the largest input + output of
    one operation counted whole, across sizes for a stride-2 operation -- a
    figure the per-size rows can understate.
    """
    rows: dict[int, dict] = {}
    for op in ops:
        for size in sorted({op.input[0], op.output[0]}, reverse=True):
            here = [shape[2] for shape in (op.input, op.output) if shape[0] == size]
            row = rows.setdefault(size, {"size": size, "channels": 0, "op": None, "parts": [], "single": 0})
            if sum(here) > row["channels"]:
                row.update(channels=sum(here), op=op.name, parts=here)
            row["single"] = max(row["single"], *here)
    out = []
    for size in sorted(rows, reverse=True):
        row = rows[size]
        row["bytes"] = row["channels"] * size * size * bytes_per_element
        row["kb"] = row["bytes"] / KB
        row["single_kb"] = row["single"] * size * size * bytes_per_element / KB
        out.append(row)
    return {
        "rows": out,
        "max_bytes": max(row["bytes"] for row in out),
        "max_kb": max(row["kb"] for row in out),
        "op_peak_bytes": max((math.prod(op.input) + math.prod(op.output)) * bytes_per_element for op in ops),
        "bytes_per_element": bytes_per_element,
    }


def _paper_setting(arch: Architecture, resolution: int) -> bool:
    """The setting of the paper's Table 3: 1.0/224, Table 2 as printed."""
    return (
        arch.width == 1.0
        and resolution == 224
        and arch.expansion == 6.0
        and arch.output_stride is None
        and arch.max_repeats is None
    )


def analytic(arch: Architecture, resolution: int, bytes_per_element: int = BYTES_16BIT) -> dict:
    """The `analytic` part of `mnv2 memory --json`: V2 (with and without the first-layer trick) and V1."""
    v2 = analytic_table(v2_ops(arch, resolution), bytes_per_element)
    plain = analytic_table(v2_ops(arch, resolution, first_layer_trick=False), bytes_per_element)
    result = {
        "rule": "per spatial size, the max over operations (bottleneck blocks whole, their expanded tensor "
        "not counted) of the channels of the operation's input + output at that size; x size^2 x bytes; batch 1",
        "width": arch.width,
        "resolution": resolution,
        "bytes_per_element": bytes_per_element,
        "kb_bytes": KB,
        "MobileNetV2": v2,
        "MobileNetV2_without_first_layer_trick": {"max_kb": plain["max_kb"], "rows": plain["rows"]},
        "MobileNetV1": analytic_table(v1_ops(arch.width, resolution, arch.num_classes), bytes_per_element),
        "paper": {
            "setting": "1.0/224, 16-bit",
            "MobileNetV2": {str(k): list(v) for k, v in PAPER_TABLE3["MobileNetV2"].items()},
            "MobileNetV1": {str(k): list(v) for k, v in PAPER_TABLE3["MobileNetV1"].items()},
            "max_kb": PAPER_MAX_KB,
        },
        "paper_setting": _paper_setting(arch, resolution),
    }
    result["notes"] = paper_notes(result) if result["paper_setting"] and bytes_per_element == 2 else []
    return result


_WHY = {
    ("MobileNetV2", 56): "The network has 24 channels at 56x56 (blocks 1-2 output 24), no 32-channel tensor: "
    "32 is the c of Table 2's row whose input is 56^2x24, but that row's first block has stride 2, so its 32 "
    "channels live at 28x28. 32 ch at 56x56 is the printed 200 kB; the rule's 24+24 (block 2) is 301 kB.",
    ("MobileNetV2", 14): "160 is Table 2's c for the row whose input is 14^2x96 (its output is at 7x7), or "
    "block 10's 64+96; blocks 11-12 map 96->96 at 14x14, 192 channels under the rule. 160 ch x 14^2 x 2 B = "
    "62.7 kB, printed 62.",
    (
        "MobileNetV2",
        7,
    ): "320 ch x 7^2 x 2 B = 31.4 kB, printed 32. 320 = 160+160 (blocks 14-15) or block 16's "
    "output alone, but block 16 maps 160->320 at 7x7: 480 under the rule.",
    ("MobileNetV2", 1): "The paper lists the pooled 1280-vector alone (2.56 kB, printed 2); the rule also "
    "counts the classifier's output (the logits) with its input.",
    ("MobileNetV1", 112): "The paper's V1 column is the largest single tensor at each size (64, 128, 256, "
    "512, 1024: every cell exactly); the rule counts a layer's input and output (32+64 for pointwise 1).",
    ("MobileNetV1", 1): "The pooled 1024-vector alone (paper) vs the classifier's input + output (rule).",
}


def paper_notes(result: dict) -> list[str]:
    """Why each cell of the paper's Table 3 (1.0/224) differs from the rule, in numbers."""
    notes: list[str] = []
    for model in ("MobileNetV2", "MobileNetV1"):
        rows = {row["size"]: row for row in result[model]["rows"]}
        for size, (pc, pkb) in PAPER_TABLE3[model].items():
            row = rows.get(size)
            # The paper rounds kB loosely (31.4 is "32"): channels decide whether a cell agrees.
            if row is None or row["channels"] == pc:
                continue
            exact = pc * size * size * BYTES_16BIT / KB
            why = _WHY.get(
                (model, size), f"Single tensor (paper) vs {'+'.join(map(str, row['parts']))} (rule)."
            )
            notes.append(
                f"{model} {size}x{size}: paper {pc} ch / {pkb} kB ({pc} ch is {exact:.1f} kB); rule "
                f"{row['channels']} ch = {'+'.join(map(str, row['parts']))} ({row['op']}) / {row['kb']:.1f} kB; "
                f"largest single tensor {row['single']} ch. {why}"
            )
    v2 = {row["size"]: row for row in result["MobileNetV2"]["rows"]}
    image = v2[result["resolution"]]
    notes.append(
        f"{result['resolution']}x{result['resolution']}: the input image ({image['kb']:.1f} kB) has no row in the "
        "paper's table; both networks read it."
    )
    v2max, v1max = result["MobileNetV2"]["max_kb"], result["MobileNetV1"]["max_kb"]
    plain = result["MobileNetV2_without_first_layer_trick"]["max_kb"]
    single_v1 = max(row["single_kb"] for row in result["MobileNetV1"]["rows"])
    notes.append(
        f"max: rule V2 {v2max:.0f} kB (paper 400), V1 {v1max:.0f} kB (paper 1600): V1/V2 = {v1max / v2max:.1f}x "
        f"(paper 4.0x; by V1's largest single tensor, as in the paper's V1 column, {single_v1:.0f} kB: "
        f"{single_v1 / v2max:.1f}x). Without the first-layer trick V2 needs {plain:.0f} kB (block 0's input and "
        "output at 112x112)."
    )
    return notes


def format_analytic(result: dict) -> str:
    """Table 3 as text: the rule beside the paper (1.0/224) for V2 and V1, then the notes."""
    v2 = {r["size"]: r for r in result["MobileNetV2"]["rows"]}
    v1 = {r["size"]: r for r in result["MobileNetV1"]["rows"]}

    def cell(row: dict | None) -> str:
        return "-" if row is None else f"{row['channels']}/{row['kb']:.1f}"

    def paper(model: str, size: int) -> str:
        value = PAPER_TABLE3[model].get(size)
        return "-" if value is None else f"{value[0]}/{value[1]}"

    setting = f"{result['width']}/{result['resolution']}"
    header = ("size", f"V2 {setting} (rule)", "V2 paper", f"V1 {setting} (rule)", "V1 paper", "V2 set by")
    table = [header]
    for size in sorted(set(v2) | set(v1), reverse=True):
        table.append(
            (
                f"{size}x{size}",
                cell(v2.get(size)),
                paper("MobileNetV2", size),
                cell(v1.get(size)),
                paper("MobileNetV1", size),
                v2[size]["op"] if size in v2 else "-",
            )
        )
    table.append(
        (
            "max",
            f"{result['MobileNetV2']['max_kb']:.0f}K",
            f"{PAPER_MAX_KB['MobileNetV2']}K",
            f"{result['MobileNetV1']['max_kb']:.0f}K",
            f"{PAPER_MAX_KB['MobileNetV1']}K",
            "",
        )
    )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    bits = 8 * result["bytes_per_element"]
    lines = [
        f"Table 3 (analytic): channels / kB materialised per spatial size ({bits}-bit activations, batch 1, "
        "kB = 1000 bytes)",
        f"Rule: {result['rule']}.",
        "Paper columns: the paper's Table 3 (1.0/224; ShuffleNet 2x, g=3: max 600K).",
        "",
    ]
    for k, row in enumerate(table):
        cells = [c.ljust(wd) if i in (0, 5) else c.rjust(wd) for i, (c, wd) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if k in (0, len(table) - 2):
            lines.append("  ".join("-" * wd for wd in widths))
    if result["notes"]:
        lines += ["", "Where the paper differs:"] + [f"- {note}" for note in result["notes"]]
    else:
        lines += ["", "(The paper's columns are for 1.0/224, 16-bit; shown for reference.)"]
    return "\n".join(lines)


# --- Measured: XLA's temporary memory and throughput ---------------------------------------------


def temp_bytes(fn: Callable, *args) -> int:
    """XLA's temporary allocation for `jit(fn)(*args)`: the peak beyond arguments, outputs and code."""
    import jax

    return int(jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes)


def _time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, target_s: float = 0.25
) -> dict[str, float]:
    """Median seconds per call of each function; repeats interleaved (A B C A B C ...) so that
    load from other processes hits all of them alike."""
    import jax

    calls = {}
    for name, fn in fns.items():
        jax.block_until_ready(fn())  # compile and warm up
        start = time.perf_counter()
        jax.block_until_ready(fn())
        calls[name] = max(1, min(200, int(target_s / max(time.perf_counter() - start, 1e-6))))
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            out = None
            for _ in range(calls[name]):
                out = fn()
            jax.block_until_ready(out)
            seconds[name].append((time.perf_counter() - start) / calls[name])
    return {name: statistics.median(s) for name, s in seconds.items()}


def measure(
    width: float = 1.0,
    resolution: int = 224,
    split: int | Sequence[int] = 4,
    batch: int = 1,
    dtype: str = "float32",
    *,
    repeats: int = 7,
    throughput: bool = True,
    plan: bool = True,
    loop: str = "while",
    depthwise_impl: str = "auto",
    pointwise_impl: str = "auto",
    max_repeats: int | None = None,
    num_classes: int = 1000,
    seed: int = 0,
) -> dict:
    """XLA temp bytes and images/s of the standard folded model (S=1), the split one and (for an
    int `split` and `plan`) the `plan_split` one.

    All run `split_apply` with the same conv implementations (by default the
    backend's fastest, `layers.resolve_impl`), so the split is the only
    difference. Images/s: the median of `repeats` interleaved timings (noisy
    on a shared machine: compare ratios from one call). `max_rel_error`: the
    largest difference from the standard model's output, relative to its
    largest magnitude.
    """
    import jax
    import jax.numpy as jnp

    from mnv2_jax.spec import build_architecture, validate
    from mnv2_jax.tools.bench import library_versions

    validate(width=width, resolution=resolution)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: must be an integer >= 1, got {batch!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: must be one of {DTYPES}, got {dtype!r}")
    arch = build_architecture(width=width, num_classes=num_classes, max_repeats=max_repeats)
    splits = normalize_split(arch, split)
    jdtype = jnp.dtype(dtype)
    params = jax.tree.map(lambda a: jnp.asarray(a, jdtype), random_folded_params(arch, seed))
    x = jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (batch, resolution, resolution, 3)), jdtype)
    variants = {"standard": (1,) * len(splits), "split": splits}
    if plan and isinstance(split, (int, np.integer)):
        variants["planned"] = plan_split(
            arch, resolution, int(split), batch=batch, bytes_per_element=jdtype.itemsize
        )
    fns = {
        name: jax.jit(
            lambda p, x, s=s: split_apply(
                arch, p, x, s, loop=loop, depthwise_impl=depthwise_impl, pointwise_impl=pointwise_impl
            )
        )
        for name, s in variants.items()
    }
    result: dict[str, Any] = {
        "width": width,
        "resolution": resolution,
        "batch": batch,
        "dtype": dtype,
        "backend": jax.default_backend(),
        "versions": library_versions(),
        "loop": loop,
        "depthwise_impl": depthwise_impl,
        "pointwise_impl": pointwise_impl,
    }
    reference = None
    for name in fns:
        # Compile once: the compiled executable gives the memory analysis and runs the timings.
        fns[name] = fns[name].lower(params, x).compile()
        entry = {"split": list(variants[name])}
        entry["temp_bytes"] = int(fns[name].memory_analysis().temp_size_in_bytes)
        out = np.asarray(fns[name](params, x), np.float32)
        if reference is None:
            reference = out
        else:
            scale = max(float(np.abs(reference).max()), 1e-12)
            entry["max_rel_error"] = float(np.abs(out - reference).max() / scale)
            entry["memory_factor"] = result["standard"]["temp_bytes"] / max(entry["temp_bytes"], 1)
        result[name] = entry
    if throughput:
        seconds = _time_interleaved({k: (lambda f=f: f(params, x)) for k, f in fns.items()}, repeats)
        for name, s in seconds.items():
            result[name]["images_per_sec"] = batch / s
            if name != "standard":
                result[name]["throughput_ratio"] = seconds["standard"] / s
        result["repeats"] = repeats
    return result


def measure_curve(
    width: float = 1.0,
    resolution: int = 224,
    splits: Sequence[int] = (1, 2, 3, 4, 5, 6),
    batch: int = 1,
    dtype: str = "float32",
    *,
    repeats: int = 7,
    throughput: bool = True,
    plan: bool = True,
    loop: str = "while",
    max_repeats: int | None = None,
    num_classes: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """Temp bytes (and images/s) for each uniform S in `splits` and, with `plan`, its
    `plan_split`: the peak-memory-vs-S curve. One row per (S, kind); kind 'uniform' or
    'planned'; S=1 is the standard model. Timings interleaved across all variants, as in
    `measure`; `throughput_ratio` is relative to S=1 from the same run.
    """
    import jax
    import jax.numpy as jnp

    from mnv2_jax.spec import build_architecture, validate

    validate(width=width, resolution=resolution)
    if dtype not in DTYPES:
        raise ValueError(f"dtype: must be one of {DTYPES}, got {dtype!r}")
    arch = build_architecture(width=width, num_classes=num_classes, max_repeats=max_repeats)
    jdtype = jnp.dtype(dtype)
    params = jax.tree.map(lambda a: jnp.asarray(a, jdtype), random_folded_params(arch, seed))
    x = jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (batch, resolution, resolution, 3)), jdtype)
    variants: dict[tuple[int, str], tuple[int, ...]] = {}
    for s in sorted(set(int(s) for s in splits) | {1}):
        variants[(s, "uniform")] = normalize_split(arch, s)
        if plan and s > 1:
            variants[(s, "planned")] = plan_split(
                arch, resolution, s, batch=batch, bytes_per_element=jdtype.itemsize
            )
    fns = {
        key: jax.jit(lambda p, x, s=s: split_apply(arch, p, x, s, loop=loop)) for key, s in variants.items()
    }
    estimate = {
        key: max(
            b for _, b in working_sets(arch, resolution, s, batch=batch, bytes_per_element=jdtype.itemsize)
        )
        for key, s in variants.items()
    }
    rows = []
    for key in fns:
        fns[key] = fns[key].lower(params, x).compile()  # once, for the analysis and the timings
        rows.append(
            {
                "S": key[0],
                "kind": key[1],
                "split": list(variants[key]),
                "temp_bytes": int(fns[key].memory_analysis().temp_size_in_bytes),
                "estimated_bytes": int(estimate[key]),
            }
        )
    base = next(r["temp_bytes"] for r in rows if r["S"] == 1)
    for row in rows:
        row["memory_factor"] = base / max(row["temp_bytes"], 1)
    if throughput:
        seconds = _time_interleaved({key: (lambda f=f: f(params, x)) for key, f in fns.items()}, repeats)
        for row in rows:
            s = seconds[(row["S"], row["kind"])]
            row["images_per_sec"] = batch / s
            row["throughput_ratio"] = seconds[(1, "uniform")] / s
    return rows


def report(
    width: float = 1.0,
    resolution: int = 224,
    split: int | Sequence[int] = 4,
    batch: int = 1,
    dtype: str = "float32",
    **kwargs,
) -> dict:
    """`mnv2 memory --json`: `analytic` (Table 3), and `standard`, `split` (and `planned`), each with
    `temp_bytes` and `images_per_sec`."""
    from mnv2_jax.spec import build_architecture

    result = {"analytic": analytic(build_architecture(width=width), resolution)}
    result.update(measure(width, resolution, split, batch, dtype, **kwargs))
    return result


def _label(splits: Sequence[int]) -> str:
    return f"S={splits[0]}" if len(set(splits)) == 1 else "S=" + ",".join(map(str, splits))


def format_measured(result: dict) -> str:
    """The measured part of `mnv2 memory`, as text."""
    lines = [
        f"Measured: XLA memory_analysis().temp_size_in_bytes of the jitted inference on {result['backend']} "
        f"({result['dtype']}, batch {result['batch']}, {result['width']}/{result['resolution']}):"
    ]
    for name in ("standard", "split", "planned"):
        if name not in result:
            continue
        entry = result[name]
        line = f"  {name:8s} {_label(entry['split']):38s} temp {entry['temp_bytes'] / 1e6:7.2f} MB"
        if name != "standard":
            line += f"  {entry['memory_factor']:.2f}x less; max rel. error {entry['max_rel_error']:.1e}"
        if "images_per_sec" in entry:
            line += f"  {entry['images_per_sec']:7.1f} img/s"
            if name != "standard":
                line += f" (x{entry['throughput_ratio']:.2f})"
        lines.append(line)
    if "repeats" in result:
        lines.append(
            f"  (images/s: median of {result['repeats']} interleaved repeats; noisy on a shared machine)"
        )
    return "\n".join(lines)
