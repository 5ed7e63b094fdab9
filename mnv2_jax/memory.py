"""Memory-efficient inference (Section 5.1 of the paper) and its Table 3.

Why this works. An inverted residual block computes F(x) = B(N(A x)): A is the
1x1 expansion (+ folded bias, ReLU6), N the per-channel depthwise conv (+ bias,
ReLU6), B the linear 1x1 projection. A, N and the activations act on each of
the t*k inner channels independently, so splitting them into S groups gives,
exactly, ``F(x) = sum_i B_i(N_i(A_i x)) + b_B`` (the projection's folded bias
added once, then the bottleneck ReLU6 of the ablation if any, then the
shortcut). Only one group's slice of the expanded tensor -- t*k/S channels --
has to exist at a time; the thin bottleneck tensors (input, accumulator) are
the only full-size ones. Batch norm must be folded into the convs first
(`mnv2_jax.interop.export.fold_batch_norm`, reused here): inference only.

Two more layers get the same treatment when a block is split (S > 1):

* First-layer trick (Table 3's caption). Block 0 has t=1 (no expansion): its
  "expanded" tensor is the stem's 32-channel 112x112 output. With the block
  split, the stem conv itself is sliced by output channel -- group i computes
  stem channels g_i from the image, then the depthwise and projection slices --
  so the 32x112x112 tensor never exists whole (32/S of its channels at a
  time). This needs block 0 to have no expansion conv and no shortcut (its
  input would then be needed whole); otherwise the stem runs normally and
  block 0 is split on its own.
* Head + pooling. The last 1x1 conv (1280 channels at 7x7) feeds only the
  global average pool, so it is computed in S groups of output channels,
  each pooled at once: the 7x7x1280 map is never whole (the paper's Table 3
  lists 1280 channels at 1x1, i.e. after pooling). The head uses the last
  block's S.

Keeping the groups sequential (what we found). Written as a Python loop, the
S groups are independent computations that XLA is free to schedule in any
order; its scheduler interleaves them (and fuses the slices' producers), so
several groups' slices are alive at once and the saving mostly disappears
(a prototype: 1.3x less temporary memory for one 112x112 block with S=4,
unrolled, versus 4x in a loop). Here each split block is a `lax.fori_loop`
(an XLA while loop) whose body computes one group from weight slices taken
with `lax.dynamic_slice` at the loop index and adds it to the accumulator
carried through the loop: a while body runs one iteration at a time and its
buffers are reused, so at most one group's slices are alive. Groups of
unequal size (S not dividing the channels) use ceil(C/S)-wide slices whose
start is clamped to stay in range; the channels a clamped slice shares with
the previous group are masked out of the projection (zero rows), so the sum
is still exact. `loop='unrolled'` keeps the Python loop for comparison.

Table 3 (analytic). `analytic_table` derives, from the architecture spec and
`accounting.count`'s per-layer shapes, for each spatial resolution the
largest number of channels and the memory (16-bit activations, batch 1) that
must be materialised there, by this rule:

* the network is a chain of operations: (stem + block 0 fused by the
  first-layer trick, or stem and block 0), each remaining bottleneck block as
  one operation, head + pooling fused, classifier. A block's inner expanded
  tensor is not counted (it is never materialised whole); nor are the
  weights;
* an operation needs its input and its output materialised at once;
* row r: the maximum over operations of the channels of that operation's
  tensors at spatial size r (input + output when both are at r; only the one
  that is, for a stride-2 operation), times r*r*2 bytes. Max: the largest row.
  kB = 1000 bytes (the paper's "Kb": 64 ch x 112^2 x 2 B = 1,605,632 B is its
  "1600K").

`single` alongside: the largest one tensor at r (this reproduces the paper's
MobileNetV1 column exactly, see `paper_notes`). The paper's table is
approximate; `paper_notes` explains every cell where it differs from the rule.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mnv2_jax.spec import Architecture, output_size

SPLIT_LOOPS = ("while", "unrolled")
BYTES_16BIT = 2
KB = 1000

# The paper's Table 3 (channels, kB) per spatial size at 1.0/224, and the maxima.
PAPER_TABLE3: dict[str, dict[Any, Any]] = {
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
# layers (depthwise 3x3 with this stride, pointwise 1x1 to this many channels).
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
    one per block. A block's S may not exceed its expanded (inner) channels,
    since every group needs at least one channel.
    """
    n = len(arch.blocks)
    if isinstance(split, bool):
        raise ValueError(f"split: must be an integer >= 1 or a sequence of {n} of them, got {split!r}")
    if isinstance(split, (int, np.integer)):
        values = (int(split),) * n
    else:
        try:
            values = tuple(split)
        except TypeError:
            raise ValueError(
                f"split: must be an integer >= 1 or a sequence of {n} of them, got {split!r}"
            ) from None
        if len(values) != n:
            raise ValueError(
                f"split: a per-block sequence needs one value per block ({n}), got {len(values)}"
            )
    for block, s in zip(arch.blocks, values):
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise ValueError(f"split: each group count must be an integer >= 1, got {s!r} for {block.name}")
        if s > block.expanded_channels:
            raise ValueError(
                f"split: {block.name} has {block.expanded_channels} inner channels, "
                f"cannot split them into {s} groups"
            )
    return tuple(int(s) for s in values)


def _relu6(x):
    import jax.numpy as jnp

    return jnp.clip(x, 0, 6)


def _fuses_stem(arch: Architecture, splits: tuple[int, ...]) -> bool:
    """The first-layer trick applies: block 0 split, no expansion conv, no shortcut, stride 1."""
    b0 = arch.blocks[0]
    return splits[0] > 1 and not b0.has_expansion and b0.shortcut is None and b0.stride == b0.dilation == 1


def _group_start(i, width: int, total: int):
    """Where group i's slice starts: clamped so that it stays in range (the last groups then
    overlap their predecessors when the group count does not divide `total`)."""
    import jax.numpy as jnp

    if isinstance(i, int):
        return min(i * width, total - width)
    return jnp.minimum(i * width, total - width)


def _zeros_after(x, shape: tuple[int, ...]):
    """Zeros of `shape` that XLA cannot create before `x` exists: a split block's accumulator.

    A plain `jnp.zeros` has no operands, and XLA's scheduler hoists it -- and
    the copy each while loop makes of its initial carry -- to the start of the
    program, so every split block's accumulator would stay alive for the whole
    network (measured at 1.0/224, S=4: 2.3 MB of a 4.7 MB peak). Adding
    min(|x[0]|, 0) -- zero for every number, inf included; NaN propagates as it
    would through the block anyway -- ties the zeros to the block's input with
    float arithmetic that XLA does not simplify away.
    """
    import jax.numpy as jnp

    anchor = jnp.minimum(jnp.abs(x.reshape(-1)[0]), 0)
    return jnp.zeros(shape, x.dtype) + anchor.astype(x.dtype)


def _accumulate(count: int, width: int, total: int, term: Callable[[Any, Any], Any], loop: str, init) -> Any:
    """init + sum_i term(start_i, i) over `count` groups, one group at a time (see the module docstring)."""
    from jax import lax

    if loop == "while":
        return lax.fori_loop(0, count, lambda i, acc: acc + term(_group_start(i, width, total), i), init)
    acc = init
    for i in range(count):
        acc = acc + term(_group_start(i, width, total), i)
    return acc


def _split_block(
    x,
    p: dict,
    block,
    groups: int,
    *,
    loop: str,
    depthwise_impl: str,
    pointwise_impl: str,
):
    """One bottleneck block as a sum over `groups` slices of its inner channels."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    from mnv2_jax import layers

    inner = block.expanded_channels
    import os
    align = int(os.environ.get("ALIGN", "1")) if not hasattr(__import__("mnv2_jax.memory").memory, "_ALIGN") else __import__("mnv2_jax.memory").memory._ALIGN
    width = min(inner, -(-(-(-inner // groups)) // align) * align)
    groups = -(-inner // width)
    exact = inner % width == 0
    kproj, bproj = p["project"]["kernel"], p["project"]["bias"]

    def slices(j: int) -> dict:
        """Group j's weights (and input channels, for a block without expansion): static slices."""
        start = _group_start(j, width, inner)

        def cut(a, axis: int):
            return lax.slice_in_dim(a, start, start + width, axis=axis)

        w = {"dw": cut(p["depthwise"]["kernel"], 3), "dwb": cut(p["depthwise"]["bias"], 0), "proj": cut(kproj, 2)}
        if start < j * width:  # clamped: the channels the group before computed get zero rows
            fresh = (np.arange(start, start + width) >= j * width).astype(np.float32)
            w["proj"] = w["proj"] * jnp.asarray(fresh, kproj.dtype)[:, None]
        if block.has_expansion:
            w["in"], w["inb"] = cut(p["expand"]["kernel"], 3), cut(p["expand"]["bias"], 0)
        else:
            w["x"] = cut(x, 3)
        return w

    shapes = jax.eval_shape(lambda: slices(0))

    def packed(j: int):
        return jnp.concatenate([a.reshape(-1) for a in jax.tree.leaves(slices(j))])

    def unpack(flat) -> dict:
        leaves, treedef = jax.tree.flatten(shapes)
        out, offset = [], 0
        for leaf in leaves:
            out.append(flat[offset : offset + leaf.size].reshape(leaf.shape))
            offset += leaf.size
        return jax.tree.unflatten(treedef, out)

    def term(start, i):
        if isinstance(i, int):  # unrolled: static slices
            w = slices(i)
        else:
            # Inside the loop, group i's slices come out of a `lax.switch` over static slices,
            # packed into one vector (one copy per group). Sliced at the traced index directly,
            # XLA fuses the dynamic slice into the large elementwise loops that read the weights
            # (the depthwise taps, bias + ReLU6), which then run several times slower (measured:
            # 1.3 ms instead of 0.2 ms per group for a 56x56 block). A switch's result is
            # materialised: a few KB of weights per group.
            w = unpack(lax.switch(i, [lambda j=j: packed(j) for j in range(groups)]))
        if block.has_expansion:
            e = _relu6(layers.pointwise_conv(x, w["in"], pointwise_impl) + w["inb"])
        else:
            e = w["x"]
        d = layers.depthwise_conv(e, w["dw"], block.stride, block.dilation, depthwise_impl)
        d = _relu6(d + w["dwb"])
        if block.shortcut == "expansion":
            d = d + e
        return layers.pointwise_conv(d, w["proj"], pointwise_impl)

    shape = jax.eval_shape(lambda: term(0, 0)).shape
    y = _accumulate(groups, width, inner, term, loop, _zeros_after(x, shape)) + bproj
    if block.bottleneck_activation == "relu6":
        y = _relu6(y)
    if block.shortcut == "bottleneck":
        y = y + x
    return y


def _first_layer_strips(
    x, stem_p: dict, stem, p: dict, block, strips: int, *, loop: str, depthwise_impl: str, pointwise_impl: str
):
    """Stem conv + block 0 (t=1, stride 1, no shortcut) in `strips` strips of output rows.

    The first-layer trick: the stem's 32-channel output is the block's inner
    tensor, and only a strip of its rows (plus the one-row halo the 3x3
    depthwise needs on each side) exists at a time. Row strips rather than
    channel groups: the stem conv keeps all its output channels, which XLA's
    CPU backend runs about 4x faster per channel than an 8-channel slice of
    it (an 8-channel conv misses the fast YNNPACK path). Strip starts are
    clamped like channel groups; an overlapping strip rewrites the same rows.
    """
    import jax.numpy as jnp
    from jax import lax

    from mnv2_jax import layers
    from mnv2_jax.spec import same_padding

    n, h, w, _ = x.shape
    k, s = stem.kernel, stem.stride
    h1, w1 = output_size(h, s), output_size(w, s)
    rows = -(-h1 // strips)
    (pt, pb), (pl, pr) = same_padding(h, k, s), same_padding(w, k, s)
    # `s` more zero rows top and bottom: stem row j (j = -1 .. h1) reads padded rows (j+1)*s ..
    # (j+1)*s + k - 1; rows -1 and h1 are the depthwise's zero padding and are masked below.
    image = jnp.pad(x, ((0, 0), (pt + s, pb + s), (pl, pr), (0, 0)))
    span = (rows + 1) * s + k

    def strip(start):
        window = lax.dynamic_slice_in_dim(image, start * s, span, axis=1)
        e = lax.conv_general_dilated(
            window, stem_p["kernel"], (s, s), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        e = _relu6(e + stem_p["bias"])
        j = start - 1 + jnp.arange(rows + 2)
        e = jnp.where(((j >= 0) & (j < h1))[None, :, None, None], e, 0)
        d = layers.depthwise_conv(e, p["depthwise"]["kernel"], 1, 1, depthwise_impl)[:, 1 : rows + 1]
        d = _relu6(d + p["depthwise"]["bias"])
        y = layers.pointwise_conv(d, p["project"]["kernel"], pointwise_impl) + p["project"]["bias"]
        return _relu6(y) if block.bottleneck_activation == "relu6" else y

    def body(i, out):
        start = _group_start(i, rows, h1)
        return lax.dynamic_update_slice_in_dim(out, strip(start), start, axis=1)

    out = _zeros_after(x, (n, h1, w1, block.out_channels))
    if loop == "while":
        return lax.fori_loop(0, strips, body, out)
    for i in range(strips):
        out = body(i, out)
    return out


def _standard_block(x, p: dict, block, *, depthwise_impl: str, pointwise_impl: str):
    """The standard folded block (S=1): every tensor whole."""
    from mnv2_jax import layers

    inputs = x
    if block.has_expansion:
        x = _relu6(layers.pointwise_conv(x, p["expand"]["kernel"], pointwise_impl) + p["expand"]["bias"])
    expanded = x
    x = layers.depthwise_conv(x, p["depthwise"]["kernel"], block.stride, block.dilation, depthwise_impl)
    x = _relu6(x + p["depthwise"]["bias"])
    if block.shortcut == "expansion":
        x = x + expanded
    x = layers.pointwise_conv(x, p["project"]["kernel"], pointwise_impl) + p["project"]["bias"]
    if block.bottleneck_activation == "relu6":
        x = _relu6(x)
    if block.shortcut == "bottleneck":
        x = x + inputs
    return x


def _head_pool(x, p: dict, groups: int, *, loop: str, pointwise_impl: str):
    """Head 1x1 conv + ReLU6 + global average pool; with groups > 1, per group of output channels."""
    import jax.numpy as jnp
    from jax import lax

    from mnv2_jax import layers

    channels = p["kernel"].shape[-1]

    def pooled(kernel, bias):
        y = _relu6(layers.pointwise_conv(x, kernel, pointwise_impl) + bias)
        return jnp.mean(y.astype(jnp.float32), axis=(1, 2))

    if groups == 1:
        return pooled(p["kernel"], p["bias"])
    width = -(-channels // groups)

    def slices(start) -> tuple:
        return (
            lax.dynamic_slice_in_dim(p["kernel"], start, width, axis=3),
            lax.dynamic_slice_in_dim(p["bias"], start, width, axis=0),
        )

    def body(start, i, out):
        # Weights through a switch, as in `_split_block`. An overlapping (clamped) group
        # recomputes the same channels: writing them again is exact.
        if isinstance(i, int):
            kernel, bias = slices(start)
        else:
            kernel, bias = lax.switch(
                i, [lambda j=j: slices(_group_start(j, width, channels)) for j in range(groups)]
            )
        return lax.dynamic_update_slice_in_dim(out, pooled(kernel, bias), start, axis=1)

    out = jnp.zeros((x.shape[0], channels), jnp.float32)  # (batch, channels): small, unlike a block's
    if loop == "while":
        return lax.fori_loop(0, groups, lambda i, out: body(_group_start(i, width, channels), i, out), out)
    for i in range(groups):
        out = body(_group_start(i, width, channels), i, out)
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

    `params`: the folded tree of `mnv2_jax.interop.export.fold_batch_norm`
    (or `random_folded_params`). `split`: an int for every block or one per
    block; S=1 everywhere is the standard folded model, equal to
    `export.folded_apply` (to float rounding). Computes in the dtype of `x`
    and `params` (cast both beforehand, e.g. to bfloat16: a cast inside a
    jitted caller would materialise a copy of every weight). Returns logits,
    or pooled features when `arch.num_classes == 0`. Jit it yourself; the
    arch, split and options are static.
    """
    import jax.numpy as jnp

    from mnv2_jax import layers

    if loop not in SPLIT_LOOPS:
        raise ValueError(f"loop: must be one of {SPLIT_LOOPS}, got {loop!r}")
    depthwise_impl = layers.resolve_impl("depthwise", depthwise_impl)
    pointwise_impl = layers.resolve_impl("pointwise", pointwise_impl)
    splits = normalize_split(arch, split)
    impls = dict(depthwise_impl=depthwise_impl, pointwise_impl=pointwise_impl)

    blocks = list(zip(arch.blocks, splits))
    if _fuses_stem(arch, splits):
        b0, s0 = blocks.pop(0)
        x = _first_layer_strips(x, params["stem"], arch.stem, params[b0.name], b0, s0, loop=loop, **impls)
    else:
        x = _relu6(layers.conv_lax(x, params["stem"]["kernel"], arch.stem.stride) + params["stem"]["bias"])
    for block, s in blocks:
        if s == 1:
            x = _standard_block(x, params[block.name], block, **impls)
        else:
            x = _split_block(x, params[block.name], block, s, loop=loop, **impls)
    x = _head_pool(x, params["head"], splits[-1], loop=loop, pointwise_impl=pointwise_impl)
    if arch.num_classes:
        kernel = params["classifier"]["kernel"]
        x = x.astype(kernel.dtype) @ kernel + params["classifier"]["bias"]
        x = x.astype(jnp.float32)
    return x


def random_folded_params(arch: Architecture, seed: int = 0) -> dict:
    """Folded parameters (same tree and shapes as `fold_batch_norm`'s) with random values.

    Memory and speed do not depend on the values, and building them directly
    avoids compiling the module's init. He-normal kernels keep activations O(1)
    so that ReLU6 is neither always off nor always saturated.
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


# --- Table 3: the analytic memory ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Op:
    """An operation that needs its input and output materialised at once; shapes are (H, W, C)."""

    name: str
    input: tuple[int, int, int]
    output: tuple[int, int, int]


def v2_ops(arch: Architecture, resolution: int, first_layer_trick: bool = True) -> list[Op]:
    """MobileNetV2 as the chain of operations the Table 3 rule counts (see the module docstring).

    Shapes come from `accounting.count`, so they follow the spec exactly
    (width rounding, odd sizes, output stride).
    """
    from mnv2_jax import accounting

    layers = {layer.name: layer for layer in accounting.count(arch, resolution).layers}
    ops: list[Op] = []
    stem = layers["stem"]
    b0 = arch.blocks[0]
    fuse = first_layer_trick and not b0.has_expansion and b0.shortcut is None
    if fuse:
        ops.append(Op(f"stem+{b0.name}", stem.in_shape, layers[f"{b0.name}/project"].out_shape))
    else:
        ops.append(Op("stem", stem.in_shape, stem.out_shape))
    for b in arch.blocks[1:] if fuse else arch.blocks:
        first = layers[f"{b.name}/expand"] if b.has_expansion else layers[f"{b.name}/depthwise"]
        ops.append(Op(b.name, first.in_shape, layers[f"{b.name}/project"].out_shape))
    head = layers["head"]
    ops.append(Op("head+pool", head.in_shape, (1, 1, head.out_shape[2])))
    if arch.num_classes:
        ops.append(Op("classifier", (1, 1, head.out_shape[2]), (1, 1, arch.num_classes)))
    return ops


def v1_ops(width: float = 1.0, resolution: int = 224, num_classes: int = 1000) -> list[Op]:
    """MobileNetV1's layers as operations (depthwise and pointwise separately: V1 materialises both).

    Channels: TF-Slim's `max(int(c * width), 8)`.
    """

    def depth(c: int) -> int:
        return max(int(c * width), 8)

    h = output_size(resolution, 2)
    c = depth(V1_STEM)
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
    """Table 3 for a chain of operations: per spatial size, largest channels and bytes (batch 1).

    Rows are ordered from the largest spatial size down. Each row records the
    operation that attains it, and `single`: the largest one tensor there.
    `op_peak_bytes`: the largest input + output of one operation counted
    whole (across resolutions for stride-2 operations), a bound the per-row
    figures can understate.
    """
    rows: dict[int, dict] = {}
    for op in ops:
        tensors = [("input", op.input), ("output", op.output)]
        sizes = {shape[0] for _, shape in tensors}
        for size in sizes:
            here = [shape for _, shape in tensors if shape[0] == size]
            channels = sum(shape[2] for shape in here)
            single = max(shape[2] for shape in here)
            row = rows.setdefault(size, {"size": size, "channels": 0, "op": None, "single": 0})
            if channels > row["channels"]:
                row.update(channels=channels, op=op.name, parts=[shape[2] for shape in here])
            row["single"] = max(row["single"], single)
    out = []
    for size in sorted(rows, reverse=True):
        row = rows[size]
        elements = size * size
        row["bytes"] = row["channels"] * elements * bytes_per_element
        row["kb"] = row["bytes"] / KB
        row["single_kb"] = row["single"] * elements * bytes_per_element / KB
        out.append(row)
    op_peak = max((math.prod(op.input) + math.prod(op.output)) * bytes_per_element for op in ops)
    return {
        "rows": out,
        "max_bytes": max(row["bytes"] for row in out),
        "max_kb": max(row["kb"] for row in out),
        "op_peak_bytes": op_peak,
        "bytes_per_element": bytes_per_element,
    }


def _paper_applies(arch: Architecture, resolution: int) -> bool:
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
    v2_plain = analytic_table(v2_ops(arch, resolution, first_layer_trick=False), bytes_per_element)
    v1 = analytic_table(v1_ops(arch.width, resolution, arch.num_classes), bytes_per_element)
    result = {
        "rule": "per spatial size: max over operations (blocks whole, inner expanded tensor not counted) "
        "of the channels of the operation's input+output tensors at that size; x size^2 x bytes; batch 1",
        "width": arch.width,
        "resolution": resolution,
        "bytes_per_element": bytes_per_element,
        "kb": KB,
        "MobileNetV2": v2,
        "MobileNetV2_without_first_layer_trick": {"max_kb": v2_plain["max_kb"], "rows": v2_plain["rows"]},
        "MobileNetV1": v1,
        "paper": {
            "setting": "1.0/224, 16-bit",
            "MobileNetV2": {str(k): list(v) for k, v in PAPER_TABLE3["MobileNetV2"].items()},
            "MobileNetV1": {str(k): list(v) for k, v in PAPER_TABLE3["MobileNetV1"].items()},
            "max_kb": PAPER_MAX_KB,
        },
        "paper_applies": _paper_applies(arch, resolution),
    }
    result["notes"] = paper_notes(result) if result["paper_applies"] else []
    return result


def paper_notes(result: dict) -> list[str]:
    """Why each cell of the paper's Table 3 (1.0/224) differs from the rule, worked out in numbers."""
    notes: list[str] = []
    for model in ("MobileNetV2", "MobileNetV1"):
        rows = {row["size"]: row for row in result[model]["rows"]}
        paper = PAPER_TABLE3[model]
        for size, (pc, pkb) in paper.items():
            row = rows.get(size)
            if row is None:
                continue
            exact_kb = pc * size * size * BYTES_16BIT / KB
            same = row["channels"] == pc and abs(row["kb"] - pkb) < 1.0
            if same:
                continue
            parts = "+".join(map(str, row["parts"]))
            line = (
                f"{model} {size}x{size}: paper {pc} ch / {pkb} kB (exactly {exact_kb:.1f} kB); rule {row['channels']} "
                f"ch = {parts} of {row['op']} / {row['kb']:.1f} kB; largest single tensor {row['single']} ch."
            )
            line += " " + _WHY.get((model, size), "")
            notes.append(line.strip())
        if size_image := next((r for r in result[model]["rows"] if r["size"] == result["resolution"]), None):
            notes.append(
                f"{model} {size_image['size']}x{size_image['size']}: the input image ({size_image['channels']} ch, "
                f"{size_image['kb']:.1f} kB) has no row in the paper's table."
            )
    v2max, v1max = result["MobileNetV2"]["max_kb"], result["MobileNetV1"]["max_kb"]
    plain = result["MobileNetV2_without_first_layer_trick"]["max_kb"]
    notes.append(
        f"max: rule V2 {v2max:.0f} kB (paper 400), V1 {v1max:.0f} kB (paper 1600): V1/V2 = {v1max / v2max:.1f}x "
        f"(paper 4x). Without the first-layer trick V2 needs {plain:.0f} kB (block 0's 32+16 channels at 112x112)."
    )
    return notes


_WHY = {
    (
        "MobileNetV2",
        56,
    ): "The network has 24 channels at 56x56 (blocks 1-2), no 32-channel tensor: 32 is the c of "
    "Table 2's row whose input is 56^2x24, but that row's first block has stride 2, so its 32 channels live at "
    "28x28. The printed 200 kB is 32 ch at 56x56; the rule's 24+24 (block 2) is 301 kB.",
    ("MobileNetV2", 14): "160 is Table 2's c for the row whose input is 14^2x96 (its output is at 7x7), or "
    "block 10's 64+96; blocks 11-12 map 96->96 at 14x14, 192 channels under the rule. 160 ch x 14^2 x 2 B = "
    "62.7 kB, printed 62.",
    (
        "MobileNetV2",
        7,
    ): "320 ch x 7^2 x 2 B = 31.4 kB, printed 32. 320 = 160+160 (blocks 14-15), but block 16 "
    "maps 160->320 at 7x7: 480 under the rule.",
    (
        "MobileNetV2",
        1,
    ): "The paper lists the pooled 1280-vector alone (2.56 kB, printed 2); the rule also counts "
    "the classifier's output (logits) with its input.",
    (
        "MobileNetV1",
        112,
    ): "The paper's V1 column is the largest single tensor at each size (64, 128, 256, 512, "
    "1024: exactly); the rule counts a layer's input and output (32+64 for pointwise 1).",
    ("MobileNetV1", 56): "Single tensor (paper) vs 128+128 (rule).",
    ("MobileNetV1", 28): "Single tensor (paper) vs 256+256 (rule).",
    ("MobileNetV1", 14): "Single tensor (paper) vs 512+512 (rule).",
    ("MobileNetV1", 7): "Single tensor (paper) vs 1024+1024 (rule).",
    ("MobileNetV1", 1): "Pooled 1024-vector alone (paper) vs the classifier's input + output (rule).",
}


def format_analytic(result: dict) -> str:
    """Table 3 as text: ours beside the paper's (1.0/224) for V2 and V1, then the notes."""
    v2 = {r["size"]: r for r in result["MobileNetV2"]["rows"]}
    v1 = {r["size"]: r for r in result["MobileNetV1"]["rows"]}
    sizes = sorted(set(v2) | set(v1), reverse=True)

    def cell(row: dict | None) -> str:
        return "-" if row is None else f"{row['channels']}/{row['kb']:.1f}"

    def paper(model: str, size: int) -> str:
        value = PAPER_TABLE3[model].get(size)
        return "-" if value is None else f"{value[0]}/{value[1]}"

    w, r = result["width"], result["resolution"]
    header = (
        "size",
        f"V2 {w:g}/{r} (rule)",
        "V2 paper",
        f"V1 {w:g}/{r} (rule)",
        "V1 paper",
        "V2 attained by",
    )
    rows = [header]
    for size in sizes:
        rows.append(
            (
                f"{size}x{size}",
                cell(v2.get(size)),
                paper("MobileNetV2", size),
                cell(v1.get(size)),
                paper("MobileNetV1", size),
                v2[size]["op"] if size in v2 else "-",
            )
        )
    rows.append(
        (
            "max",
            f"{result['MobileNetV2']['max_kb']:.0f}K",
            f"{PAPER_MAX_KB['MobileNetV2']}K",
            f"{result['MobileNetV1']['max_kb']:.0f}K",
            f"{PAPER_MAX_KB['MobileNetV1']}K",
            "",
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "Table 3 (analytic): channels / kB that must be materialised per spatial size "
        f"({8 * result['bytes_per_element']}-bit activations, batch 1, kB = 1000 bytes).",
        "Rule: "
        + result["rule"]
        + ". Paper columns: the paper's Table 3 (1.0/224; ShuffleNet 2x,g=3: max 600K).",
        "",
    ]
    for k, row in enumerate(rows):
        lines.append(
            "  ".join(
                c.ljust(wd) if i in (0, 5) else c.rjust(wd) for i, (c, wd) in enumerate(zip(row, widths))
            )
        )
        if k == 0 or k == len(rows) - 2:
            lines.append("  ".join("-" * wd for wd in widths))
    if result["notes"]:
        lines += ["", "Where the paper differs:"] + [f"- {note}" for note in result["notes"]]
    elif not result["paper_applies"]:
        lines += ["", "(The paper's columns are for 1.0/224; they are shown for reference only.)"]
    return "\n".join(lines)


# --- Measured: XLA's peak temporary memory and throughput ----------------------------------------


def temp_bytes(fn: Callable, *args) -> int:
    """XLA's temporary allocation for `jit(fn)(*args)`: what inference needs beyond inputs, outputs and code."""
    import jax

    return int(jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes)


def _time_interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, target_s: float = 0.3
) -> dict[str, float]:
    """Median seconds per call of each function, repeats interleaved (A B A B ...) against drift and noise."""
    import jax

    calls = {}
    for name, fn in fns.items():
        jax.block_until_ready(fn())  # warm-up (and compile)
        start = time.perf_counter()
        jax.block_until_ready(fn())
        once = time.perf_counter() - start
        calls[name] = max(1, min(200, int(target_s / max(once, 1e-6))))
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
    loop: str = "while",
    max_repeats: int | None = None,
    num_classes: int = 1000,
    seed: int = 0,
) -> dict:
    """XLA temp bytes and images/s of the standard folded model (S=1) and the split one.

    Both run `split_apply` with the same conv implementations (the backend's
    fastest, `layers.resolve_impl`), so the only difference is the split.
    Throughput: the median over `repeats` interleaved timings. Also checks
    that the two outputs agree (`max_rel_error`, relative to the largest
    output magnitude).
    """
    import jax
    import jax.numpy as jnp

    from mnv2_jax.spec import build_architecture, validate

    validate(width=width, resolution=resolution)
    if batch < 1:
        raise ValueError(f"batch: must be >= 1, got {batch}")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype: must be float32 or bfloat16, got {dtype!r}")
    arch = build_architecture(width=width, num_classes=num_classes, max_repeats=max_repeats)
    splits = normalize_split(arch, split)
    jdtype = jnp.dtype(dtype)
    params = jax.tree.map(lambda a: jnp.asarray(a, jdtype), random_folded_params(arch, seed))
    x = jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (batch, resolution, resolution, 3)), jdtype)

    def make(s):
        return jax.jit(lambda p, x: split_apply(arch, p, x, s, loop=loop))

    fns = {"standard": make(1), "split": make(splits)}
    result: dict[str, Any] = {
        "width": width,
        "resolution": resolution,
        "batch": batch,
        "dtype": dtype,
        "backend": jax.default_backend(),
        "loop": loop,
    }
    for name, fn in fns.items():
        result[name] = {"temp_bytes": int(fn.lower(params, x).compile().memory_analysis().temp_size_in_bytes)}
    result["split"]["split"] = list(splits)
    result["memory_factor"] = result["standard"]["temp_bytes"] / max(result["split"]["temp_bytes"], 1)
    ref, out = (
        np.asarray(fns["standard"](params, x), np.float32),
        np.asarray(fns["split"](params, x), np.float32),
    )
    result["max_rel_error"] = float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), 1e-12))
    if throughput:
        seconds = _time_interleaved({k: (lambda f=f: f(params, x)) for k, f in fns.items()}, repeats)
        for name, s in seconds.items():
            result[name]["images_per_sec"] = batch / s
        result["throughput_ratio"] = result["split"]["images_per_sec"] / result["standard"]["images_per_sec"]
        result["repeats"] = repeats
    return result


def report(width: float, resolution: int, split, batch: int = 1, dtype: str = "float32", **kwargs) -> dict:
    """`mnv2 memory --json`: `analytic` (Table 3), `standard` and `split` (temp_bytes, images_per_sec)."""
    from mnv2_jax.spec import build_architecture

    arch = build_architecture(width=width)
    result = {"analytic": analytic(arch, resolution)}
    result.update(measure(width, resolution, split, batch, dtype, **kwargs))
    return result


def format_measured(result: dict) -> str:
    """The measured part of `mnv2 memory` as text."""
    std, spl = result["standard"], result["split"]
    s = spl["split"]
    label = f"S={s[0]}" if len(set(s)) == 1 else "S=" + ",".join(map(str, s))
    lines = [
        f"Measured ({result['backend']}, XLA memory_analysis temp_size_in_bytes; {result['dtype']}, "
        f"batch {result['batch']}, {result['width']:g}/{result['resolution']}):",
        f"  standard (S=1)  temp {std['temp_bytes'] / 1e6:8.2f} MB",
        f"  split ({label})  temp {spl['temp_bytes'] / 1e6:8.2f} MB   "
        f"{result['memory_factor']:.2f}x less; outputs agree to {result['max_rel_error']:.1e} (relative)",
    ]
    if "images_per_sec" in std:
        lines.append(
            f"  throughput: standard {std['images_per_sec']:.1f} img/s, split {spl['images_per_sec']:.1f} img/s "
            f"(x{result['throughput_ratio']:.2f}; median of {result['repeats']} interleaved repeats)"
        )
    return "\n".join(lines)
