"""Convolution kernels with per-backend implementations.

XLA's grouped convolution (`feature_group_count=C`) is the bottleneck of
MobileNetV2 on CPU, forward and especially backward. The depthwise 3x3 conv is
tiny work (9 multiply-adds per output) and is faster as nine shifted
multiply-adds that XLA fuses into one loop; its gradient gets the same
treatment through a custom VJP. 1x1 convs are a contraction over channels,
which XLA's CPU dot emitter handles better than its conv emitter.

Every implementation computes TF's 'SAME' convolution exactly (the extra pad
row/column goes bottom/right) and uses the same kernel layout as `nn.Conv`
(HWIO; depthwise kernels are (kh, kw, 1, C)), so parameters and checkpoints
do not depend on the implementation chosen. Tests compare every
implementation with `lax.conv_general_dilated`, outputs and gradients.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from mnv2_jax.spec import same_padding

DEPTHWISE_IMPLS = ("auto", "lax", "shifted")
POINTWISE_IMPLS = ("auto", "lax", "dot")
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def resolve_impl(kind: str, impl: str, backend: str | None = None) -> str:
    """Pick the implementation for `auto`: the fastest one measured per backend.

    CPU: shifted depthwise and dot pointwise (5-15x faster depthwise here).
    GPU/TPU: XLA's own convolutions (cuDNN / the TPU conv emitter handle
    grouped convs natively).
    """
    allowed = DEPTHWISE_IMPLS if kind == "depthwise" else POINTWISE_IMPLS
    if impl not in allowed:
        raise ValueError(f"{kind}_impl: must be one of {allowed}, got {impl!r}")
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    if backend == "cpu":
        return "shifted" if kind == "depthwise" else "dot"
    return "lax"


def _pads(x_shape, kernel_shape, stride: int, dilation: int) -> tuple[tuple[int, int], tuple[int, int]]:
    _, h, w, _ = x_shape
    kh, kw = kernel_shape[:2]
    return same_padding(h, kh, stride, dilation), same_padding(w, kw, stride, dilation)


# cuDNN indexes tensors with 32-bit integers: a convolution whose input or
# output holds more elements runs in slower kernels, if at all. PyTorch splits
# the batch of such a convolution into pieces under the bound (aten's
# `split_batch_dim_to_32bit_out`); `conv_lax` does the same on GPU, where at
# 1.0/224 block 1's expansion (112 x 112 x 96) passes 2^31 elements from batch
# 1,784 (`benchmarks/batch_cliff.py` times it, and without the split with
# `--no-conv-split`).
GPU_CONV_MAX_ELEMENTS = 2**31 - 1


def conv_split_bound() -> int | None:
    """The element bound `conv_lax` splits at by default: on GPU only."""
    return GPU_CONV_MAX_ELEMENTS if jax.default_backend() == "gpu" else None


def conv_batch_pieces(x_shape, kernel_shape, stride: int, max_elements: int | None) -> int:
    """How many batch pieces keep a convolution's input and output each under
    `max_elements` (1: no split; also when one image alone is over, or the
    batch is symbolic as in a shape-polymorphic export)."""
    if max_elements is None or not all(isinstance(d, int) for d in x_shape):
        return 1
    batch, h, w, c = x_shape
    per_image = max(h * w * c, _out_size(h, stride) * _out_size(w, stride) * kernel_shape[-1])
    if batch * per_image <= max_elements or per_image > max_elements:
        return 1
    return -(-batch // (max_elements // per_image))


def conv_lax(
    x: jax.Array,
    kernel: jax.Array,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    max_elements: int | None | str = "auto",
) -> jax.Array:
    """XLA's convolution with TF 'SAME' padding; over batch pieces when the input or
    output has more than `max_elements` elements ('auto': `conv_split_bound()`;
    None: never split)."""
    if max_elements == "auto":
        max_elements = conv_split_bound()
    conv = functools.partial(
        lax.conv_general_dilated,
        rhs=kernel,
        window_strides=(stride, stride),
        padding=_pads(x.shape, kernel.shape, stride, dilation),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=_DIMENSION_NUMBERS,
        feature_group_count=groups,
    )
    pieces = conv_batch_pieces(x.shape, kernel.shape, stride, max_elements)
    if pieces == 1:
        return conv(x)
    edges = [round(i * x.shape[0] / pieces) for i in range(pieces + 1)]
    return jnp.concatenate([conv(x[a:b]) for a, b in zip(edges, edges[1:])], axis=0)


def _out_size(size: int, stride: int) -> int:
    return -(-size // stride)


def _taps(xpad: jax.Array, kh: int, kw: int, ho: int, wo: int, stride: int, dilation: int):
    """The kh*kw strided views of the padded input, one per kernel tap."""
    n, _, _, c = xpad.shape
    for a in range(kh):
        for b in range(kw):
            start = (0, a * dilation, b * dilation, 0)
            limit = (n, a * dilation + (ho - 1) * stride + 1, b * dilation + (wo - 1) * stride + 1, c)
            yield a, b, lax.slice(xpad, start, limit, (1, stride, stride, 1))


def _same_taps(x: jax.Array, kernel_shape, stride: int, dilation: int):
    """`_taps` of `x` padded TF-'SAME' for a kernel of `kernel_shape`."""
    (pt, pb), (pl, pr) = _pads(x.shape, kernel_shape, stride, dilation)
    ho, wo = _out_size(x.shape[1], stride), _out_size(x.shape[2], stride)
    xpad = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    return _taps(xpad, kernel_shape[0], kernel_shape[1], ho, wo, stride, dilation)


def _shifted_forward(x, kernel, stride, dilation):
    out = None
    for a, b, tap in _same_taps(x, kernel.shape, stride, dilation):
        term = tap * kernel[a, b, 0]
        out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_shifted(x: jax.Array, kernel: jax.Array, stride: int = 1, dilation: int = 1) -> jax.Array:
    """Depthwise conv (kernel (kh, kw, 1, C)) as kh*kw shifted multiply-adds."""
    return _shifted_forward(x, kernel, stride, dilation)


def _shifted_fwd(x, kernel, stride, dilation):
    return _shifted_forward(x, kernel, stride, dilation), (x, kernel)


def _depthwise_input_grad(g, kernel, size, pad_low, padded, stride, dilation):
    """The input gradient as the forward pass computes its output: g on the stride
    grid of the padded input, padded once by a kernel's reach on each side, then
    kh*kw shifted multiply-adds with the flipped kernel, cropped to the input.

    One materialised pad and plain slices, as in the forward pass, rather than
    kh*kw zero-padded scatters of g (one `lax.pad` with interior padding per
    tap), which XLA fuses but with bounds checks per tap and element.
    """
    (h, w), (pt, pl), (hp, wp) = size, pad_low, padded
    kh, kw = kernel.shape[:2]
    ho, wo = g.shape[1:3]
    reach_h, reach_w = (kh - 1) * dilation, (kw - 1) * dilation
    span_h, span_w = (ho - 1) * stride + 1, (wo - 1) * stride + 1
    gpad = lax.pad(
        g,
        jnp.zeros((), g.dtype),
        ((0, 0, 0), (reach_h, hp - span_h, stride - 1), (reach_w, wp - span_w, stride - 1), (0, 0, 0)),
    )
    dx = None
    for a in range(kh):
        for b in range(kw):
            top, left = pt + (kh - 1 - a) * dilation, pl + (kw - 1 - b) * dilation
            view = lax.slice_in_dim(lax.slice_in_dim(gpad, top, top + h, axis=1), left, left + w, axis=2)
            term = view * kernel[a, b, 0]
            dx = term if dx is None else dx + term
    return dx


# The depthwise kernel gradient runs over the batch in chunks of at least this
# many bytes of output gradient (see `kernel_grad_chunk`).
KERNEL_GRAD_CHUNK_BYTES = 700_000


def kernel_grad_chunk(
    g_shape: tuple[int, ...],
    itemsize: int = 4,
    backend: str | None = None,
    device_count: int | None = None,
) -> int:
    """Images per chunk of the depthwise kernel gradient for an output gradient of
    `g_shape`: on a single CPU device the smallest divisor of the batch whose chunk
    holds KERNEL_GRAD_CHUNK_BYTES; elsewhere (GPU, TPU, several devices, where the
    batch is sharded) the whole batch."""
    backend = backend or jax.default_backend()
    device_count = jax.device_count() if device_count is None else device_count
    batch = g_shape[0]
    if backend != "cpu" or device_count != 1:
        return batch
    per_image = math.prod(g_shape[1:]) * itemsize
    reaching = [d for d in range(1, batch + 1) if batch % d == 0 and d * per_image >= KERNEL_GRAD_CHUNK_BYTES]
    return min(reaching, default=batch)


def _taps_kernel_grad(x, g, kernel_shape, stride, dilation):
    return jnp.stack(
        [
            jnp.sum(tap * g, axis=(0, 1, 2), dtype=jnp.float32)
            for _, _, tap in _same_taps(x, kernel_shape, stride, dilation)
        ]
    )


def depthwise_kernel_grad(
    x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...], stride: int, dilation: int, chunk: int
) -> jax.Array:
    """The depthwise kernel gradient, (kh, kw, 1, C) in float32: per tap, the sum
    over the batch and the pixels of the tap's view of `x` times `g`, summed over
    the batch `chunk` images at a time (`chunk` divides the batch).

    XLA materialises each tap's view and reduces it on its own, so over the whole
    batch at once `g` is read from memory kh*kw times and the scheduler keeps the
    kh*kw views alive together. A chunk stays in cache, and XLA's temporaries
    for the train step are about half those of the whole-batch version.
    """
    batch, _, _, channels = x.shape
    if chunk >= batch:
        return _taps_kernel_grad(x, g, kernel_shape, stride, dilation).reshape(kernel_shape)

    kh, kw = kernel_shape[:2]
    (pt, pb), (pl, pr) = _pads(x.shape, kernel_shape, stride, dilation)
    ho, wo = g.shape[1:3]
    span = (chunk, (ho - 1) * stride + 1, (wo - 1) * stride + 1, channels)

    # Loops over slices of x and g, not `lax.map` over (batch // chunk, chunk, ...)
    # reshapes, which XLA copies (a full-size copy at chunks of 1). The taps are a
    # loop too, so that XLA compiles one tap kernel and one reduction per layer
    # shape instead of kh*kw of each (fewer kernels, a faster compile).
    def add_chunk(i, dk):
        xc = lax.dynamic_slice_in_dim(x, i * chunk, chunk)
        gc = lax.dynamic_slice_in_dim(g, i * chunk, chunk)
        xpad = jnp.pad(xc, ((0, 0), (pt, pb), (pl, pr), (0, 0)))

        def add_tap(t, dk):
            window = lax.dynamic_slice(xpad, (0, (t // kw) * dilation, (t % kw) * dilation, 0), span)
            tap = lax.slice(window, (0, 0, 0, 0), span, (1, stride, stride, 1))
            row = jnp.sum(tap * gc, axis=(0, 1, 2), dtype=jnp.float32)
            return lax.dynamic_update_index_in_dim(
                dk, lax.dynamic_index_in_dim(dk, t, keepdims=False) + row, t, 0
            )

        return lax.fori_loop(0, kh * kw, add_tap, dk)

    dk = jnp.zeros((kh * kw, channels), jnp.float32)
    return lax.fori_loop(0, batch // chunk, add_chunk, dk).reshape(kernel_shape)


def _shifted_bwd(stride, dilation, residuals, g):
    x, kernel = residuals
    (pt, pb), (pl, pr) = _pads(x.shape, kernel.shape, stride, dilation)
    _, h, w, _ = x.shape
    hp, wp = h + pt + pb, w + pl + pr
    chunk = kernel_grad_chunk(g.shape, g.dtype.itemsize)
    dkernel = depthwise_kernel_grad(x, g, kernel.shape, stride, dilation, chunk)
    dx = _depthwise_input_grad(g, kernel, (h, w), (pt, pl), (hp, wp), stride, dilation)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


depthwise_shifted.defvjp(_shifted_fwd, _shifted_bwd)


def depthwise_conv(
    x: jax.Array, kernel: jax.Array, stride: int = 1, dilation: int = 1, impl: str = "auto"
) -> jax.Array:
    """3x3 (any kxk) depthwise conv with TF 'SAME' padding; kernel (kh, kw, 1, C)."""
    impl = resolve_impl("depthwise", impl)
    if impl == "shifted":
        return depthwise_shifted(x, kernel, stride, dilation)
    return conv_lax(x, kernel, stride, dilation, groups=x.shape[-1])


def conv_im2col(x: jax.Array, kernel: jax.Array, stride: int = 1, dilation: int = 1) -> jax.Array:
    """A full kxk conv as one matmul: the kh*kw shifted views side by side (im2col).

    For the stem (3 input channels, so K = 27) this is about 2x faster on CPU
    than XLA's convolution, forward and for the weight gradient.
    """
    kh, kw, cin, cout = kernel.shape
    cols = jnp.concatenate([tap for _, _, tap in _same_taps(x, kernel.shape, stride, dilation)], axis=-1)
    y = jnp.dot(cols.reshape(-1, kh * kw * cin), kernel.reshape(kh * kw * cin, cout))
    return y.reshape(*cols.shape[:3], cout)


def full_conv(
    x: jax.Array, kernel: jax.Array, stride: int = 1, dilation: int = 1, impl: str = "auto"
) -> jax.Array:
    """A kxk conv over all input channels (the stem); `impl` as for 1x1 convs: `dot` = im2col."""
    impl = resolve_impl("pointwise", impl)
    if impl == "dot":
        return conv_im2col(x, kernel, stride, dilation)
    return conv_lax(x, kernel, stride, dilation)


def pointwise_conv(x: jax.Array, kernel: jax.Array, impl: str = "auto") -> jax.Array:
    """1x1 conv; kernel (1, 1, C_in, C_out)."""
    impl = resolve_impl("pointwise", impl)
    if impl == "dot":
        if use_small_k(x.shape):
            return pointwise_small_k(x, kernel[0, 0])
        return _pointwise_dot(x, kernel[0, 0])
    return conv_lax(x, kernel)


# A 1x1 conv with at most SMALL_K input channels over at least SMALL_K_PIXELS
# pixels (batch x height x width) runs as multiply-adds, not a matmul.
SMALL_K = 24
SMALL_K_PIXELS = 100_000


def use_small_k(x_shape: tuple[int, ...]) -> bool:
    """Whether `pointwise_conv(impl='dot')` takes `pointwise_small_k` for this input."""
    return x_shape[-1] <= SMALL_K and math.prod(x_shape[:-1]) >= SMALL_K_PIXELS


def _pointwise_dot(x: jax.Array, w: jax.Array) -> jax.Array:
    # As a 2-D matmul: the weight gradient is then x^T g on (pixels, C) matrices,
    # which XLA's CPU dot takes as is; with 4-D operands it first transposes the
    # whole output gradient.
    y = jnp.dot(x.reshape(-1, x.shape[-1]), w)
    return y.reshape(*x.shape[:-1], w.shape[-1])


@jax.custom_vjp
def pointwise_small_k(x: jax.Array, w: jax.Array) -> jax.Array:
    """1x1 conv with few input channels as C_in broadcast multiply-adds; w (C_in, C_out).

    With K = C_in <= 24 a matmul is bound by writing its wide output, which the
    batch norm and ReLU6 after it then read back. As multiply-adds XLA fuses the
    conv into that elementwise pass, which pays up to K = 24 over large maps and
    not on small tensors, hence `SMALL_K` and `SMALL_K_PIXELS`. The gradients
    are `_pointwise_dot`'s.
    """
    acc = jnp.promote_types(x.dtype, jnp.float32)  # bfloat16 inputs sum in float32, as a matmul's do
    xa, wa = x.astype(acc), w.astype(acc)
    out = xa[..., 0:1] * wa[0]
    for k in range(1, x.shape[-1]):
        out = out + xa[..., k : k + 1] * wa[k]
    return out.astype(jnp.result_type(x, w))


def _small_k_fwd(x, w):
    return pointwise_small_k(x, w), (x, w)


def _small_k_bwd(residuals, g):
    x, w = residuals
    # The matmul path's own gradients (its unused forward product is dead code
    # that XLA drops).
    _, vjp = jax.vjp(_pointwise_dot, x, w)
    return vjp(g)


pointwise_small_k.defvjp(_small_k_fwd, _small_k_bwd)


@jax.custom_jvp
def relu6(x: jax.Array) -> jax.Array:
    """min(max(x, 0), 6), whose gradient is a plain mask: 1 inside (0, 6), else 0.

    `jnp.clip`'s own derivative splits ties (x exactly 0 or 6) with selects and
    a division per element, which made the ReLU6 backward the costliest
    elementwise pass of the CPU train step; this is also what TF and PyTorch
    differentiate (gradient 0 at the kinks).
    """
    return jnp.clip(x, 0, 6)


@relu6.defjvp
def _relu6_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    y = relu6(x)
    inside = (y > 0) & (y < 6)
    return y, jnp.where(inside, t, jnp.zeros_like(t))
