"""Convolution kernels (`mnv2_jax.nn.layers`): every implementation against XLA's own convolution,
outputs and gradients, and TF's 'SAME' padding (the extra row/column goes bottom/right)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mnv2_jax.nn import layers

DN = ("NHWC", "HWIO", "NHWC")


@pytest.fixture(autouse=True)
def _full_float32():
    # XLA's convolutions in full float32 on every backend (GPUs default to TF32 for them).
    with jax.default_matmul_precision("highest"):
        yield


def _rand(seed, shape, dtype=jnp.float32):
    # NumPy, not jax.random: each new shape would cost an XLA compile of the random-number code.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32), dtype)


def _reference_depthwise(x, kernel, stride, dilation):
    """Grouped conv with explicitly computed TF 'SAME' padding (independent of `spec.same_padding`)."""
    pads = []
    for size, k in zip(x.shape[1:3], kernel.shape[:2]):
        effective = (k - 1) * dilation + 1
        out = -(-size // stride)
        total = max((out - 1) * stride + effective - size, 0)
        pads.append((total // 2, total - total // 2))
    return lax.conv_general_dilated(
        x,
        kernel,
        (stride, stride),
        pads,
        rhs_dilation=(dilation, dilation),
        dimension_numbers=DN,
        feature_group_count=x.shape[-1],
        precision=lax.Precision.HIGHEST,
    )


def _assert_close(actual, expected, rtol=1e-5):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = np.max(np.abs(expected)) + 1e-30
    np.testing.assert_allclose(actual / scale, expected / scale, rtol=0, atol=rtol * 10)
    # ...and relative to the norm (tight overall, tolerant of float32 summation order per element).
    assert np.linalg.norm(actual - expected) <= rtol * np.linalg.norm(expected)


@functools.partial(jax.jit, static_argnames=("stride", "dilation"))
def _both_with_grads(x, kernel, cotangent, stride, dilation):
    """Outputs and input/kernel gradients (VJP with `cotangent`) of 'shifted' and of the reference."""
    out = {}
    for name, fn in (
        ("shifted", lambda x, k: layers.depthwise_conv(x, k, stride, dilation, impl="shifted")),
        ("lax", lambda x, k: layers.depthwise_conv(x, k, stride, dilation, impl="lax")),
        ("reference", lambda x, k: _reference_depthwise(x, k, stride, dilation)),
    ):
        y, vjp = jax.vjp(fn, x, kernel)
        out[name] = (y, *vjp(cotangent))
    return out


DEPTHWISE_CASES = [
    # (height, width, stride, dilation, kernel size)
    (7, 7, 1, 1, 3),
    (8, 8, 1, 1, 3),
    (7, 9, 2, 1, 3),
    (8, 16, 2, 1, 3),
    (9, 9, 2, 1, 3),
    (16, 16, 2, 1, 3),
    (9, 8, 1, 2, 3),
    (16, 7, 2, 2, 3),
    (3, 3, 1, 4, 3),  # dilated kernel wider than the map (atrous tail of the network)
    (9, 8, 2, 1, 5),
]


@pytest.mark.parametrize("h, w, stride, dilation, k", DEPTHWISE_CASES)
def test_depthwise_shifted_matches_grouped_conv(h, w, stride, dilation, k):
    c = 5
    x = _rand(0, (2, h, w, c))
    kernel = _rand(1, (k, k, 1, c))
    ho, wo = -(-h // stride), -(-w // stride)
    cotangent = _rand(2, (2, ho, wo, c))
    out = _both_with_grads(x, kernel, cotangent, stride=stride, dilation=dilation)
    y_ref, dx_ref, dk_ref = out["reference"]
    assert y_ref.shape == (2, ho, wo, c)
    for impl in ("shifted", "lax"):
        y, dx, dk = out[impl]
        _assert_close(y, y_ref)
        _assert_close(dx, dx_ref)
        _assert_close(dk, dk_ref)
        assert dx.dtype == x.dtype and dk.dtype == kernel.dtype and dk.shape == kernel.shape


@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 1), (1, 2)])
def test_depthwise_kernel_grad_in_chunks_matches_whole_batch(stride, dilation):
    # The chunked sum over the batch (the CPU path on one device) against the
    # reference conv's kernel gradient, for chunks of 1, 2 and 3 of 6 images.
    x, kernel = _rand(10, (6, 9, 8, 5)), _rand(11, (3, 3, 1, 5))
    g = _rand(12, (6, -(-9 // stride), -(-8 // stride), 5))
    _, vjp = jax.vjp(lambda k: _reference_depthwise(x, k, stride, dilation), kernel)
    (expected,) = vjp(g)
    grad = jax.jit(layers.depthwise_kernel_grad, static_argnums=(2, 3, 4, 5))
    for chunk in (6, 1, 2, 3):
        dk = grad(x, g, kernel.shape, stride, dilation, chunk)
        assert dk.dtype == jnp.float32
        _assert_close(dk, expected)


def test_kernel_grad_chunk_splits_only_on_one_cpu_device():
    # 56x56x144 float32 is 1.7 MiB per image: one image per chunk.
    assert layers.kernel_grad_chunk((128, 56, 56, 144), 4, "cpu", 1) == 1
    # 7x7x960 is 0.18 MiB: the smallest divisor reaching KERNEL_GRAD_CHUNK_BYTES.
    per_image = 7 * 7 * 960 * 4
    expected = min(
        d for d in range(1, 129) if 128 % d == 0 and d * per_image >= layers.KERNEL_GRAD_CHUNK_BYTES
    )
    assert layers.kernel_grad_chunk((128, 7, 7, 960), 4, "cpu", 1) == expected == 4
    assert layers.kernel_grad_chunk((128, 7, 7, 960), 2, "cpu", 1) == 8  # bfloat16: half the bytes
    assert layers.kernel_grad_chunk((6, 4, 4, 8), 4, "cpu", 1) == 6  # small: the whole batch
    assert layers.kernel_grad_chunk((128, 56, 56, 144), 4, "gpu", 1) == 128
    assert layers.kernel_grad_chunk((128, 56, 56, 144), 4, "cpu", 8) == 128


def test_depthwise_shifted_under_jit_grad():
    # The custom VJP composes with jax.grad of a scalar loss under jit.
    x, kernel = _rand(3, (1, 6, 6, 4)), _rand(4, (3, 3, 1, 4))

    def loss(impl, x, k):
        return jnp.sum(jnp.sin(layers.depthwise_conv(x, k, 2, 1, impl=impl)))

    g_shifted = jax.jit(jax.grad(functools.partial(loss, "shifted"), argnums=(0, 1)))(x, kernel)
    g_lax = jax.jit(jax.grad(functools.partial(loss, "lax"), argnums=(0, 1)))(x, kernel)
    for a, b in zip(g_shifted, g_lax):
        _assert_close(a, b)


def test_depthwise_bfloat16_gradients_keep_dtypes():
    x, kernel = _rand(5, (2, 8, 8, 8), jnp.bfloat16), _rand(6, (3, 3, 1, 8), jnp.bfloat16)
    g = _rand(7, (2, 4, 4, 8), jnp.bfloat16)

    @jax.jit
    def run(x, kernel, g):
        y, vjp = jax.vjp(lambda x, k: layers.depthwise_conv(x, k, 2, impl="shifted"), x, kernel)
        f32 = [a.astype(jnp.float32) for a in (x, kernel, g)]
        y32, vjp32 = jax.vjp(lambda x, k: _reference_depthwise(x, k, 2, 1), *f32[:2])
        return (y, *vjp(g)), (y32, *vjp32(f32[2]))

    (y, dx, dk), expected = run(x, kernel, g)
    assert (y.dtype, dx.dtype, dk.dtype) == (jnp.bfloat16,) * 3
    for a, b in zip((y, dx, dk), expected):
        a, b = np.asarray(a, np.float32), np.asarray(b)
        assert np.linalg.norm(a - b) <= 2e-2 * np.linalg.norm(b)


def test_pointwise_dot_matches_lax():
    x = _rand(8, (2, 5, 7, 12))
    kernel = _rand(9, (1, 1, 12, 20))
    cot = _rand(10, (2, 5, 7, 20))

    @jax.jit
    def run(x, kernel, cot):
        out = {}
        for impl in ("dot", "lax"):
            y, vjp = jax.vjp(lambda x, k, impl=impl: layers.pointwise_conv(x, k, impl=impl), x, kernel)
            out[impl] = (y, *vjp(cot))
        return out

    out = run(x, kernel, cot)
    expected = np.einsum("nhwc,cd->nhwd", np.asarray(x, np.float64), np.asarray(kernel[0, 0], np.float64))
    _assert_close(out["lax"][0], expected)
    for a, b in zip(out["dot"], out["lax"]):
        _assert_close(a, b)


def test_pointwise_small_k_matches_dot_values_and_gradients():
    x = _rand(11, (2, 5, 7, 16))
    w = _rand(12, (16, 24))
    cot = _rand(13, (2, 5, 7, 24))

    @jax.jit
    def run(x, w, cot):
        out = {}
        for name, fn in (("small_k", layers.pointwise_small_k), ("dot", layers._pointwise_dot)):
            y, vjp = jax.vjp(fn, x, w)
            out[name] = (y, *vjp(cot))
        return out

    out = run(x, w, cot)
    expected = np.einsum("nhwc,cd->nhwd", np.asarray(x, np.float64), np.asarray(w, np.float64))
    _assert_close(out["small_k"][0], expected)
    for a, b in zip(out["small_k"], out["dot"]):
        _assert_close(a, b)


def test_pointwise_small_k_only_for_few_channels_over_many_pixels():
    assert layers.use_small_k((32, 112, 112, 16))
    assert layers.use_small_k((32, 56, 56, layers.SMALL_K))
    assert not layers.use_small_k((32, 56, 56, layers.SMALL_K + 1))
    assert not layers.use_small_k((2, 5, 7, 16))  # too few pixels: the matmul is faster


@pytest.mark.parametrize(
    "h, w, stride, dilation, k",
    [(9, 9, 2, 1, 3), (8, 8, 2, 1, 3), (7, 10, 1, 1, 3), (8, 9, 1, 2, 3), (6, 6, 2, 1, 1)],
)
def test_full_conv_im2col_matches_lax(h, w, stride, dilation, k):
    x, kernel = _rand(11, (2, h, w, 3)), _rand(12, (k, k, 3, 8))
    cot = _rand(13, (2, -(-h // stride), -(-w // stride), 8))

    @jax.jit
    def run(x, kernel, cot):
        out = {}
        for impl in ("dot", "lax"):
            fn = lambda x, k, impl=impl: layers.full_conv(x, k, stride, dilation, impl=impl)  # noqa: E731
            y, vjp = jax.vjp(fn, x, kernel)
            out[impl] = (y, *vjp(cot))
        return out

    out = run(x, kernel, cot)
    for a, b in zip(out["dot"], out["lax"]):
        assert a.shape == b.shape
        _assert_close(a, b)


@pytest.mark.parametrize("impl", ["shifted", "lax"])
def test_same_padding_stride2_even_input_pads_bottom_right_only(impl):
    """On an 8x8 input a 3x3 stride-2 conv needs one pad row/column: TF puts it bottom/right.

    The input is zero except its first row and column, and the kernel reads only its top-left tap.
    With TF's padding, output (0, 0) reads input (0, 0); with the pad on top/left it would read the
    zero padding instead, and every output would shift.
    """
    x = np.zeros((1, 8, 8, 2), np.float32)
    x[0, 0, :, :] = np.arange(1, 9)[:, None]
    x[0, :, 0, :] = np.arange(1, 9)[:, None] * 10
    x = jnp.asarray(x + np.arange(64, dtype=np.float32).reshape(1, 8, 8, 1) / 100)
    kernel = np.zeros((3, 3, 1, 2), np.float32)
    kernel[0, 0] = 1.0
    kernel[1, 2] = 0.5
    kernel = jnp.asarray(kernel)
    explicit = lax.conv_general_dilated(
        lax.pad(x, 0.0, ((0, 0, 0), (0, 1, 0), (0, 1, 0), (0, 0, 0))),
        kernel,
        (2, 2),
        "VALID",
        dimension_numbers=DN,
        feature_group_count=2,
    )
    top_left = lax.conv_general_dilated(
        lax.pad(x, 0.0, ((0, 0, 0), (1, 0, 0), (1, 0, 0), (0, 0, 0))),
        kernel,
        (2, 2),
        "VALID",
        dimension_numbers=DN,
        feature_group_count=2,
    )
    assert not np.allclose(explicit, top_left)  # the input is one where the side matters
    y = jax.jit(functools.partial(layers.depthwise_conv, stride=2, impl=impl))(x, kernel)
    np.testing.assert_allclose(y, explicit, rtol=1e-6)
    # Output (0, 0) reads input (0, 0) through the top-left tap (the only one in range there).
    assert float(y[0, 0, 0, 0]) == pytest.approx(float(x[0, 0, 0, 0] + 0.5 * x[0, 1, 2, 0]))


def test_same_padding_regular_conv_stride2():
    x = _rand(11, (1, 8, 10, 3))
    kernel = _rand(12, (3, 3, 3, 4))
    explicit = lax.conv_general_dilated(
        lax.pad(x, 0.0, ((0, 0, 0), (0, 1, 0), (0, 1, 0), (0, 0, 0))),
        kernel,
        (2, 2),
        "VALID",
        dimension_numbers=DN,
    )
    _assert_close(layers.conv_lax(x, kernel, stride=2), explicit)
    # Odd input: one pad on each side.
    x = _rand(13, (1, 9, 9, 3))
    explicit = lax.conv_general_dilated(
        lax.pad(x, 0.0, ((0, 0, 0), (1, 1, 0), (1, 1, 0), (0, 0, 0))),
        kernel,
        (2, 2),
        "VALID",
        dimension_numbers=DN,
    )
    _assert_close(layers.conv_lax(x, kernel, stride=2), explicit)


def test_resolve_impl():
    assert layers.resolve_impl("depthwise", "auto", "cpu") == "shifted"
    assert layers.resolve_impl("pointwise", "auto", "cpu") == "dot"
    for backend in ("gpu", "cuda", "tpu"):
        assert layers.resolve_impl("depthwise", "auto", backend) == "lax"
        assert layers.resolve_impl("pointwise", "auto", backend) == "lax"
    assert layers.resolve_impl("depthwise", "lax", "cpu") == "lax"
    assert layers.resolve_impl("depthwise", "shifted", "gpu") == "shifted"
    assert layers.resolve_impl("pointwise", "dot", "tpu") == "dot"
    assert layers.resolve_impl("depthwise", "auto") == (
        "shifted" if jax.default_backend() == "cpu" else "lax"
    )
    with pytest.raises(ValueError, match="^depthwise_impl:.*'dot'"):
        layers.resolve_impl("depthwise", "dot")
    with pytest.raises(ValueError, match="^pointwise_impl:.*'shifted'"):
        layers.resolve_impl("pointwise", "shifted")
    with pytest.raises(ValueError, match="^depthwise_impl:"):
        layers.depthwise_conv(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 1, 2)), impl="fast")


def test_relu6_values_and_mask_gradient():
    x = jnp.array([-2.0, 0.0, 0.5, 3.0, 6.0, 7.5], jnp.float32)
    np.testing.assert_array_equal(layers.relu6(x), jnp.clip(x, 0, 6))
    grad = jax.grad(lambda v: jnp.sum(layers.relu6(v) * jnp.arange(1.0, 7.0)))(x)
    # 1 strictly inside (0, 6), 0 outside and at the kinks (as TF and PyTorch).
    np.testing.assert_array_equal(grad, [0.0, 0.0, 3.0, 4.0, 0.0, 0.0])
    away = jnp.array([-1.0, 0.25, 2.0, 5.9, 9.0], jnp.float32)
    np.testing.assert_array_equal(
        jax.grad(lambda v: jnp.sum(layers.relu6(v)))(away),
        jax.grad(lambda v: jnp.sum(jnp.clip(v, 0, 6)))(away),
    )
    bf16 = jax.grad(lambda v: jnp.sum(layers.relu6(v)).astype(jnp.float32))(x.astype(jnp.bfloat16))
    assert bf16.dtype == jnp.bfloat16


def test_conv_batch_pieces_are_the_fewest_that_keep_each_piece_under_the_bound():
    # (batch, 12, 12, 16) -> stride 2, 40 channels: 2,304 input and 1,440 output elements per image
    x_shape, kernel_shape = (10, 12, 12, 16), (3, 3, 16, 40)
    per_image = max(12 * 12 * 16, 6 * 6 * 40)
    for bound in (per_image, 3 * per_image, 3 * per_image + 1, 9 * per_image, 10 * per_image - 1):
        pieces = layers.conv_batch_pieces(x_shape, kernel_shape, 2, bound)
        assert -(-10 // pieces) * per_image <= bound  # the largest piece fits
        assert -(-10 // (pieces - 1)) * per_image > bound  # one piece fewer would not
    assert layers.conv_batch_pieces(x_shape, kernel_shape, 2, 10 * per_image) == 1  # fits whole
    assert layers.conv_batch_pieces(x_shape, kernel_shape, 2, per_image - 1) == 1  # one image is over
    assert layers.conv_batch_pieces(x_shape, kernel_shape, 2, None) == 1
    symbolic = jax.export.symbolic_shape("b, 12, 12, 16")
    assert layers.conv_batch_pieces(symbolic, kernel_shape, 2, per_image) == 1


@pytest.mark.parametrize(
    "kernel_shape, stride, groups", [((3, 3, 1, 6), 2, 6), ((1, 1, 6, 10), 1, 1), ((3, 3, 3, 6), 2, 1)]
)
def test_conv_lax_over_batch_pieces_matches_one_convolution(kernel_shape, stride, groups, monkeypatch):
    """The GPU path splits convolutions past 2^31 elements over the batch: the same
    values and gradients (input and kernel) as one convolution, here with a bound
    that forces 3 uneven pieces of a batch of 7."""
    cin = kernel_shape[2] * groups
    x, kernel = _rand(0, (7, 9, 9, cin)), _rand(1, kernel_shape)
    per_image = max(9 * 9 * cin, (-(-9 // stride)) ** 2 * kernel_shape[-1])
    bound = 3 * per_image
    assert layers.conv_batch_pieces(x.shape, kernel.shape, stride, bound) == 3
    whole = functools.partial(layers.conv_lax, stride=stride, groups=groups, max_elements=None)
    split = functools.partial(layers.conv_lax, stride=stride, groups=groups, max_elements=bound)
    _assert_close(split(x, kernel), whole(x, kernel))
    g = _rand(2, whole(x, kernel).shape)
    grads = [
        jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) * g), argnums=(0, 1))(x, kernel) for f in (whole, split)
    ]
    _assert_close(grads[1][0], grads[0][0])
    _assert_close(grads[1][1], grads[0][1])

    # one convolution per piece in the program; 'auto' splits only on GPU, at GPU_CONV_MAX_ELEMENTS
    def convolutions(f):
        return jax.jit(f).lower(x, kernel).as_text().count("stablehlo.convolution")

    assert convolutions(split) == 3 and convolutions(whole) == 1
    monkeypatch.setattr(layers, "GPU_CONV_MAX_ELEMENTS", bound)
    auto = functools.partial(layers.conv_lax, stride=stride, groups=groups)
    assert convolutions(auto) == (3 if jax.default_backend() == "gpu" else 1)
