"""The Flax model (`mnv2_jax.models.mobilenet_v2`): shapes for every paper width and odd resolutions, the ablation
variants change exactly what they should, named features, output stride, bfloat16 compute, and the
fast CPU kernels against XLA's convolutions on a whole (tiny) network.

Most shape checks trace only (`jax.eval_shape`); the tests that run the network share the tiny model of
`conftest.py` and its compiled functions.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY, TINY_RESOLUTION, random_variables

from mnv2_jax import spec
from mnv2_jax.models.mobilenet_v2 import ConvBN, MobileNetV2, create_model, init_variables


def _shapes(model, resolution, batch=2, height=None, return_features=False):
    """Trace init + apply: (output shapes, variable shapes)."""
    h, w = (resolution, resolution) if height is None else (height, resolution)
    x = jnp.zeros((batch, h, w, 3))

    def run():
        return model.init_with_output(jax.random.PRNGKey(0), x, train=False, return_features=return_features)

    out, variables = jax.eval_shape(run)
    return out, variables


def _tree_shapes(tree):
    return jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), tree)


def _zero_bn(variables, layer: str):
    """Copy of `variables` whose batch norm in `layer` (e.g. 'block_2/project') outputs zeros."""
    variables = jax.tree_util.tree_map(lambda a: a, variables)  # new containers, same arrays
    params = variables["params"]
    for key in layer.split("/"):
        params = params[key]
    params["bn"] = {
        "scale": jnp.zeros_like(params["bn"]["scale"]),
        "bias": jnp.zeros_like(params["bn"]["bias"]),
    }
    return variables


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("width", spec.PAPER_WIDTHS)
def test_output_shapes_for_paper_widths(width):
    model = create_model(width=width)
    (logits, features), variables = _shapes(model, 32, return_features=True)
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    arch = model.arch
    assert features["head"].shape == (2, 1, 1, arch.head.out_channels)
    assert features["pre_logits"].shape == (2, arch.head.out_channels)
    assert features["stem"].shape == (2, 16, 16, arch.stem.out_channels)
    assert variables["params"]["classifier"]["kernel"].shape == (arch.head.out_channels, 1000)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))


@pytest.mark.parametrize("resolution, height", [(32, None), (33, None), (97, None), (224, None), (56, 40)])
def test_output_shapes_for_resolutions(resolution, height):
    model = create_model(width=0.5, num_classes=7)
    (logits, features), _ = _shapes(model, resolution, batch=3, height=height, return_features=True)
    h = resolution if height is None else height
    assert logits.shape == (3, 7)
    assert features["head"].shape == (3, math.ceil(h / 32), math.ceil(resolution / 32), 1280)
    assert features["stem"].shape[1:3] == (math.ceil(h / 2), math.ceil(resolution / 2))


def test_no_classifier():
    model = create_model(width=0.35, num_classes=0)
    (out, features), variables = _shapes(model, 64, return_features=True)
    assert out.shape == (2, 1280)
    assert "classifier" not in variables["params"]


@pytest.mark.parametrize("output_stride, resolution", [(16, 64), (8, 64), (16, 97), (32, 64)])
def test_output_stride_sets_the_head_resolution(output_stride, resolution):
    model = create_model(width=0.5, output_stride=output_stride)
    (_, features), variables = _shapes(model, resolution, batch=1, return_features=True)
    side = math.ceil(resolution / output_stride)
    assert features["head"].shape == (1, side, side, 1280)
    assert features["block_16"].shape[1:3] == (side, side)
    # Atrous layers change no parameter: the tree is that of the plain network.
    _, plain = _shapes(create_model(width=0.5), resolution, batch=1)
    assert _tree_shapes(variables) == _tree_shapes(plain)


# ----------------------------------------------------------------------------- features
def test_feature_names_shapes_and_values(tiny):
    logits, features = tiny.features()
    arch = tiny.model.arch
    expected_names = {"stem", "head", "pre_logits"}
    for b in arch.blocks:
        expected_names.add(b.name)
        if b.has_expansion:
            expected_names.add(f"{b.name}/expansion")
    assert set(features) == expected_names
    assert "block_0/expansion" not in features and "block_1/expansion" in features
    assert len(arch.blocks) == 12

    n, size = 2, TINY_RESOLUTION
    size = spec.output_size(size, 2)
    assert features["stem"].shape == (n, size, size, arch.stem.out_channels)
    for b in arch.blocks:
        if b.has_expansion:
            assert features[f"{b.name}/expansion"].shape == (n, size, size, b.expanded_channels)
        size = spec.output_size(size, b.stride)
        assert features[b.name].shape == (n, size, size, b.out_channels)
    assert size == 2  # 36 -> 18 -> 9 -> 5 -> 3 -> 2
    assert features["head"].shape == (n, 2, 2, 1280)
    # pre_logits is the spatial mean of the head; the logits are the classifier applied to it.
    np.testing.assert_allclose(
        features["pre_logits"], features["head"].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6
    )
    cls = jax.tree_util.tree_map(np.asarray, tiny.variables["params"]["classifier"])
    expected = np.asarray(features["pre_logits"]) @ cls["kernel"] + cls["bias"]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    # Post-ReLU6 tensors are in [0, 6]; the linear bottlenecks are not clipped.
    for name in ("stem", "head", "block_3/expansion"):
        assert 0 <= float(features[name].min()) and float(features[name].max()) <= 6
    assert float(features["block_0"].min()) < 0


# ----------------------------------------------------------------------------- variants
def test_relu6_bottleneck_same_params_different_outputs(tiny):
    relu6 = tiny.variant(bottleneck_activation="relu6")
    assert _tree_shapes(_shapes(relu6, TINY_RESOLUTION)[1]) == _tree_shapes(
        _shapes(tiny.model, TINY_RESOLUTION)[1]
    )
    _, base = tiny.features()
    _, other = tiny.features(relu6)
    np.testing.assert_array_equal(base["stem"], other["stem"])
    # Block 0 has no shortcut: its output is the projection, clipped to [0, 6] only with relu6.
    np.testing.assert_allclose(other["block_0"], np.clip(base["block_0"], 0, 6), rtol=1e-6, atol=1e-6)
    assert not np.allclose(base["block_0"], other["block_0"])
    assert not np.allclose(base["head"], other["head"])


@pytest.mark.parametrize("residual", ["none", "expansion"])
def test_residual_variants_same_params_differ_from_the_first_shortcut(tiny, residual):
    variant = tiny.variant(residual=residual)
    assert _tree_shapes(_shapes(variant, TINY_RESOLUTION)[1]) == _tree_shapes(
        _shapes(tiny.model, TINY_RESOLUTION)[1]
    )
    _, base = tiny.features()
    _, other = tiny.features(variant)
    first = min(b.index for b in tiny.model.arch.blocks if b.shortcut)
    assert first == 2
    for name in ("stem", "block_0", "block_1", "block_2/expansion"):
        np.testing.assert_allclose(base[name], other[name], rtol=1e-6, atol=1e-6)
    assert not np.allclose(base["block_2"], other["block_2"])


@pytest.mark.parametrize("residual", ["bottleneck", "none"])
def test_bottleneck_shortcuts_are_where_the_spec_says(tiny, residual):
    """A block whose projection outputs zeros returns its input exactly when it has a bottleneck
    shortcut, and zeros otherwise."""
    model = tiny.variant(residual=residual)
    blocks = model.arch.blocks
    expected = [b.index for b in blocks if b.shortcut == "bottleneck"]
    assert expected == ([2, 4, 6, 8, 10] if residual == "bottleneck" else [])
    found = []
    for b in blocks:
        _, features = tiny.features(model, _zero_bn(tiny.variables, f"{b.name}/project"))
        before = features[f"block_{b.index - 1}"] if b.index else features["stem"]
        out = np.asarray(features[b.name])
        if b.stride == 1 and before.shape == out.shape and np.array_equal(out, before):
            found.append(b.index)
        else:
            assert not out.any(), b.name
    assert found == expected


def test_expansion_shortcuts_are_where_the_spec_says(tiny):
    """With the depthwise conv outputting zeros, a block with the 'expansion' shortcut still passes
    its expanded tensor to the projection (the output varies with the input); without it the
    projection sees zeros and the block's output is the same at every position."""
    model = tiny.variant(residual="expansion")
    expected = [b.index for b in model.arch.blocks if b.shortcut == "expansion"]
    assert expected == [2, 4, 6, 8, 10]
    found = []
    for b in model.arch.blocks:
        _, features = tiny.features(model, _zero_bn(tiny.variables, f"{b.name}/depthwise"))
        out = np.asarray(features[b.name])
        if np.ptp(out, axis=(0, 1, 2)).max() > 1e-3:
            found.append(b.index)
    assert found == expected


def test_bfloat16_compute_with_float32_params(tiny):
    model = tiny.variant(dtype=jnp.bfloat16)
    _, variables = _shapes(model, TINY_RESOLUTION)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))
    logits16, features16 = tiny.features(model)
    logits32, _ = tiny.features()
    assert logits16.dtype == jnp.float32 and features16["block_5"].dtype == jnp.bfloat16
    assert np.all(np.isfinite(logits16))
    err = np.linalg.norm(np.asarray(logits16) - np.asarray(logits32)) / np.linalg.norm(logits32)
    assert err < 0.08  # 0.026 on CPU with these seeds; a wrong cast or unscaled layer is O(1)


def test_fast_kernels_match_xla_convolutions_on_the_whole_model(tiny):
    """'shifted' depthwise + 'dot' pointwise against 'lax' for both: logits and the gradients with
    respect to every parameter and to the input (VJP with a random cotangent). One block per row of
    Table 2 and output stride 8, so that the depthwise convs run with stride 2 on odd and even maps
    and dilated by 2 and 4 on a 5x5 map."""
    settings = dict(TINY, max_repeats=1, output_stride=8)
    assert {(b.stride, b.dilation) for b in spec.build_architecture(**settings).blocks} == {
        (1, 1),
        (2, 1),
        (1, 2),
        (1, 4),
    }
    variables = random_variables(create_model(**settings), TINY_RESOLUTION, seed=5)
    cotangent = jnp.asarray(np.random.default_rng(3).standard_normal((2, 10)), jnp.float32)
    results = {}
    for depthwise, pointwise in (("shifted", "dot"), ("lax", "lax")):
        model = create_model(**settings, depthwise_impl=depthwise, pointwise_impl=pointwise)

        @jax.jit
        def run(params, x, model=model):
            def f(params, x):
                return model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x)

            logits, vjp = jax.vjp(f, params, x)
            return logits, vjp(cotangent)

        with jax.default_matmul_precision("highest"):  # no TF32 on GPUs
            results[depthwise] = run(variables["params"], tiny.x)
    (logits_fast, (dparams_fast, dx_fast)), (logits_lax, (dparams_lax, dx_lax)) = results.values()
    np.testing.assert_allclose(logits_fast, logits_lax, rtol=1e-4, atol=1e-4 * np.abs(logits_lax).max())
    flat_fast = jax.tree_util.tree_leaves_with_path(dparams_fast)
    flat_lax = jax.tree_util.tree_leaves(dparams_lax)
    assert len(flat_fast) == len(flat_lax) == len(jax.tree_util.tree_leaves(variables["params"]))
    for (path, a), b in zip(flat_fast, flat_lax):
        a, b = np.asarray(a), np.asarray(b)
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b) + 1e-12, jax.tree_util.keystr(path)
    assert np.linalg.norm(dx_fast - dx_lax) <= 1e-4 * np.linalg.norm(dx_lax)
    assert np.abs(dx_lax).max() > 0


# ----------------------------------------------------------------------------- initialisation
def test_init_variables():
    """`init_variables` builds the full tree (traced: compiling its random-number code costs ~10 s of
    CPU); the initialisers are checked on one conv unit, which is what every layer uses."""
    model = create_model(**TINY)
    traced = jax.eval_shape(lambda: init_variables(model, TINY_RESOLUTION, seed=3))
    _, expected = _shapes(model, TINY_RESOLUTION, batch=1)
    assert _tree_shapes(traced) == _tree_shapes(expected)

    unit = ConvBN(1280)  # the head: (1, 1, 112, 1280)
    variables = jax.jit(lambda: unit.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 112)), train=False))()
    np.testing.assert_array_equal(variables["batch_stats"]["bn"]["mean"], 0)
    np.testing.assert_array_equal(variables["batch_stats"]["bn"]["var"], 1)
    np.testing.assert_array_equal(variables["params"]["bn"]["scale"], 1)
    np.testing.assert_array_equal(variables["params"]["bn"]["bias"], 0)
    kernel = np.asarray(variables["params"]["conv"]["kernel"])
    assert kernel.shape == (1, 1, 112, 1280)
    std = math.sqrt(2 / 112)  # He initialisation (fan in), as TF-Slim and Keras
    assert kernel.std() == pytest.approx(std, rel=0.03)
    assert np.abs(kernel).max() <= 2 * std / 0.87962566103423978 + 1e-6  # truncated at two std


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(width=0), "width"),
        (dict(width=-1.0), "width"),
        (dict(bottleneck_activation="swish"), "bottleneck_activation"),
        (dict(residual="dense"), "residual"),
        (dict(output_stride=2), "output_stride"),
        (dict(expansion=(6, 6)), "expansion"),
        (dict(expansion=0), "expansion"),
        (dict(num_classes=-3), "num_classes"),
    ],
)
def test_create_model_rejects_bad_settings(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        create_model(**kwargs)


@pytest.mark.parametrize("field, name", [("depthwise_impl", "fast"), ("pointwise_impl", "conv")])
def test_bad_implementation_names(field, name):
    model = create_model(width=0.35, max_repeats=1, **{field: name})
    with pytest.raises(ValueError, match=f"^{field}:"):
        _shapes(model, 32)


def test_init_variables_rejects_small_resolution():
    model = create_model(width=0.35, max_repeats=1)
    for bad in (31, 16, 0):
        with pytest.raises(ValueError, match="^resolution:"):
            init_variables(model, bad)


@pytest.mark.parametrize("shape", [(1, 32, 32, 1), (1, 3, 32, 32), (1, 32, 32, 4), (32, 32, 3)])
def test_inputs_must_be_nhwc_rgb(shape):
    model = create_model(width=0.35, max_repeats=1)
    with pytest.raises(ValueError, match="^inputs:.*3 channels"):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))


def test_module_from_architecture():
    arch = spec.build_architecture(**TINY)
    assert MobileNetV2(arch).arch == create_model(**TINY).arch == arch


def test_convolutions_split_over_the_batch_leave_the_train_step_unchanged(tiny, monkeypatch):
    """On GPU, convolutions past 2^31 elements run over batch pieces (`layers.conv_lax`).
    Forced here with a bound of one image's largest feature map on the 'lax' model: the
    program holds more convolutions, and the train-mode loss (batch statistics over the
    whole batch), the gradients and the new batch statistics are those of the whole convs."""
    from mnv2_jax.nn import layers

    model = tiny.variant(depthwise_impl="lax", pointwise_impl="lax", dropout_rate=0.0)
    _, features = tiny.features(model)
    per_image = max(math.prod(f.shape[1:]) for f in features.values() if f.ndim == 4)

    def train_grads():
        def loss(params, x):
            out, updates = model.apply(
                {"params": params, "batch_stats": tiny.variables["batch_stats"]},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            return jnp.sum(out * jnp.arange(out.shape[-1])), updates["batch_stats"]

        step = jax.jit(jax.value_and_grad(loss, has_aux=True))
        with jax.default_matmul_precision("highest"):
            convs = step.lower(tiny.variables["params"], tiny.x).as_text().count("stablehlo.convolution")
            return convs, step(tiny.variables["params"], tiny.x)

    whole_convs, whole = train_grads()
    monkeypatch.setattr(layers, "conv_split_bound", lambda: per_image)
    split_convs, split = train_grads()
    assert split_convs > whole_convs
    # Gradients that train-mode batch norm makes zero in exact arithmetic (a bias right before
    # the next batch norm) are float32 noise on both sides: a floor relative to the whole gradient.
    scale = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree_util.tree_leaves(whole[1])))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(split), jax.tree_util.tree_leaves(whole)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b) + 1e-6 * scale, jax.tree_util.keystr(path)
