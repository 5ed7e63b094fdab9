"""Analytic multiply-adds and parameter counts, read off the architecture spec.

Definitions (those of the published TF-Slim table: 1.0/224 = 300M MAdds,
3.47M parameters):

* ``madds``: multiply-adds of every convolution and of the classifier for one
  image. A conv producing an HxWxC_out map from C_in channels with a k x k
  kernel costs H*W*k*k*C_in*C_out (depthwise: H*W*k*k*C). Batch norm,
  activations, shortcut additions, pooling and biases are not counted.
* ``params``: conv kernels plus the classifier's weights and biases (convs
  have no bias: batch norm follows each of them).
* ``params_bn``: batch norm's scale and offset (2 per channel); the moving
  statistics are state, not parameters, and are not counted. Keras'
  "trainable params" is ``params + params_bn``.

A task head adds its own layers (`conv` counts one, `Counts.extended` appends
them), counted by the same rules: convs with a bias add it to ``params``,
never to ``madds``.
"""

from __future__ import annotations

import dataclasses

from mnv2_jax.spec import Architecture, BlockSpec, ConvSpec, output_size, validate


@dataclasses.dataclass(frozen=True)
class LayerCount:
    name: str
    kind: str  # conv, expand, depthwise, project, classifier
    in_shape: tuple[int, int, int]  # H, W, C
    out_shape: tuple[int, int, int]
    madds: int
    params: int
    params_bn: int


@dataclasses.dataclass(frozen=True)
class Counts:
    resolution: int
    layers: tuple[LayerCount, ...]

    @property
    def madds(self) -> int:
        return sum(layer.madds for layer in self.layers)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def params_bn(self) -> int:
        return sum(layer.params_bn for layer in self.layers)

    def extended(self, layers: list[LayerCount] | tuple[LayerCount, ...]) -> Counts:
        """These counts with more layers (a task head's) after them."""
        return Counts(resolution=self.resolution, layers=(*self.layers, *layers))

    def out_shape(self, name: str) -> tuple[int, int, int]:
        """The output shape of the layer called `name` (e.g. `block_13/expand`, `head`)."""
        for layer in self.layers:
            if layer.name == name:
                return layer.out_shape
        raise KeyError(f"no layer {name!r}; layers: {', '.join(layer.name for layer in self.layers)}")


def conv(
    name: str,
    kind: str,
    h: int,
    w: int,
    c_in: int,
    c_out: int,
    kernel: int,
    stride: int,
    depthwise: bool = False,
    bn: bool = True,
    bias: bool = False,
) -> LayerCount:
    """One 'SAME' conv on an `h` x `w` x `c_in` input (with batch norm after it unless `bn=False`,
    with a bias if `bias=True`)."""
    ho, wo = output_size(h, stride), output_size(w, stride)
    per_output = kernel * kernel * (1 if depthwise else c_in)
    weights = per_output * c_out
    return LayerCount(
        name=name,
        kind=kind,
        in_shape=(h, w, c_in),
        out_shape=(ho, wo, c_out),
        madds=ho * wo * weights,
        params=weights + (c_out if bias else 0),
        params_bn=2 * c_out if bn else 0,
    )


def count(arch: Architecture, resolution: int) -> Counts:
    """Per-layer MAdds and parameters for one `resolution` x `resolution` image."""
    validate(width=arch.width, resolution=resolution)
    h = w = resolution
    layers: list[LayerCount] = []

    def add(layer: LayerCount) -> None:
        nonlocal h, w
        layers.append(layer)
        h, w = layer.out_shape[:2]

    stem: ConvSpec = arch.stem
    add(conv(stem.name, "conv", h, w, stem.in_channels, stem.out_channels, stem.kernel, stem.stride))
    for block in arch.blocks:
        add_block(layers, block, h, w)
        h, w = layers[-1].out_shape[:2]
    head = arch.head
    add(conv(head.name, "conv", h, w, head.in_channels, head.out_channels, 1, 1))
    if arch.num_classes:
        c = head.out_channels
        layers.append(
            LayerCount(
                name="classifier",
                kind="classifier",
                in_shape=(1, 1, c),
                out_shape=(1, 1, arch.num_classes),
                madds=c * arch.num_classes,
                params=c * arch.num_classes + arch.num_classes,
                params_bn=0,
            )
        )
    return Counts(resolution=resolution, layers=tuple(layers))


def add_block(layers: list[LayerCount], block: BlockSpec, h: int, w: int) -> None:
    name = block.name
    c = block.in_channels
    if block.has_expansion:
        layers.append(conv(f"{name}/expand", "expand", h, w, c, block.expanded_channels, 1, 1))
        c = block.expanded_channels
    layers.append(conv(f"{name}/depthwise", "depthwise", h, w, c, c, 3, block.stride, depthwise=True))
    h, w = layers[-1].out_shape[:2]
    layers.append(conv(f"{name}/project", "project", h, w, c, block.out_channels, 1, 1))


def summary(arch: Architecture, resolution: int) -> dict:
    """The numbers `mnv2 info --json` prints."""
    counts = count(arch, resolution)
    return {
        "width": arch.width,
        "resolution": resolution,
        "expansion": list(arch.expansion) if isinstance(arch.expansion, tuple) else arch.expansion,
        "bottleneck_activation": arch.bottleneck_activation,
        "residual": arch.residual,
        "output_stride": arch.output_stride,
        "num_classes": arch.num_classes,
        "madds": counts.madds,
        "params": counts.params,
        "params_bn": counts.params_bn,
    }


def format_table(arch: Architecture, resolution: int) -> str:
    """A per-layer table (shape, MAdds, params) with totals, for `mnv2 info`."""
    return format_counts(count(arch, resolution))


# --------------------------------------------------------------------------------------------------
# Mobile DeepLabv3 (the segmentation task): the backbone up to its last block plus the DeepLabv3 head
# of `mnv2_jax.tasks.segmentation.head`. Batch norm follows every head conv but the logits, which
# have a bias instead; the bilinear upsampling and the image pooling's mean are not counted.

DEEPLAB_ASPP_RATES_AT_OS16 = (6, 12, 18)


def count_to_last_block(arch: Architecture, resolution: int) -> list[LayerCount]:
    """The backbone's layers up to its last block (TF-Slim's `final_endpoint='layer_18'`): no
    1280-channel conv, no classifier."""
    layers = list(count(arch, resolution).layers)
    last = max(i for i, layer in enumerate(layers) if layer.name.startswith(arch.blocks[-1].name + "/"))
    return layers[: last + 1]


def count_deeplab(
    arch: Architecture,
    resolution: int,
    num_classes: int,
    aspp: bool = False,
    aspp_separable: bool = False,
    depth: int = 256,
) -> Counts:
    """Per-layer MAdds and parameters of Mobile DeepLabv3 for one `resolution` x `resolution` image.

    `arch` is the backbone at the run's output stride. The ASPP rates do not change the analytic count
    (a dilated 3x3 conv costs what a 3x3 conv costs); TF's `SpaceToBatchND` atrous convs compute over
    padded maps, which is why the paper's ASPP rows (5.8B) are higher than this count (5.36B).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes: the segmentation head needs at least 1 class, got {num_classes!r}")
    layers = count_to_last_block(arch, resolution)
    h, w, c = layers[-1].out_shape
    layers.append(conv("image_pooling", "conv", 1, 1, c, depth, 1, 1))
    layers.append(conv("aspp0", "conv", h, w, c, depth, 1, 1))
    branches = 2
    if aspp:
        for i in range(1, len(DEEPLAB_ASPP_RATES_AT_OS16) + 1):
            if aspp_separable:
                layers.append(conv(f"aspp{i}_depthwise", "depthwise", h, w, c, c, 3, 1, depthwise=True))
                layers.append(conv(f"aspp{i}_pointwise", "conv", h, w, c, depth, 1, 1))
            else:
                layers.append(conv(f"aspp{i}", "conv", h, w, c, depth, 3, 1))
            branches += 1
    layers.append(conv("concat_projection", "conv", h, w, branches * depth, depth, 1, 1))
    layers.append(conv("logits", "logits", h, w, depth, num_classes, 1, 1, bn=False, bias=True))
    return Counts(resolution=resolution, layers=tuple(layers))


def deeplab_summary(
    arch: Architecture,
    resolution: int,
    num_classes: int,
    aspp: bool = False,
    aspp_separable: bool = False,
    depth: int = 256,
) -> dict:
    """The numbers `mnv2 info --task segmentation --json` prints; `params_total` = `params` +
    `params_bn` (the paper's Table 7 counts batch norm: 2.11M)."""
    counts = count_deeplab(arch, resolution, num_classes, aspp, aspp_separable, depth)
    return {
        **summary(arch, resolution),
        "num_classes": num_classes,
        "aspp": aspp,
        "aspp_separable": aspp_separable,
        "madds": counts.madds,
        "params": counts.params,
        "params_bn": counts.params_bn,
        "params_total": counts.params + counts.params_bn,
    }


def format_counts(counts: Counts) -> str:
    """A per-layer table (shape, MAdds, params) with totals, of any counts (a backbone with a task
    head included)."""
    rows = [("layer", "input", "output", "MAdds", "params", "bn params")]
    for layer in counts.layers:
        rows.append(
            (
                layer.name,
                "x".join(map(str, layer.in_shape)),
                "x".join(map(str, layer.out_shape)),
                f"{layer.madds:,}",
                f"{layer.params:,}",
                f"{layer.params_bn:,}",
            )
        )
    rows.append(("total", "", "", f"{counts.madds:,}", f"{counts.params:,}", f"{counts.params_bn:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(wd) for cell, wd in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells))
        if k == 0 or k == len(rows) - 2:
            lines.append("  ".join("-" * wd for wd in widths))
    return "\n".join(lines)
