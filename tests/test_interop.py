"""Keras import, batch-norm folding, SavedModel/TFLite export and TFLite latency.

The Keras models are randomly initialised (`weights=None`, no network) with
random batch-norm statistics, so every ported tensor matters: identity batch
norm would hide a swapped mean/variance or a wrong epsilon. Sizes are small
and include odd and non-square inputs, because TF 'SAME' padding (and Keras'
`correct_pad`) puts the extra row differently for odd and even sizes.
Models are built once per module (Keras construction is the slow part).
"""

from __future__ import annotations

import functools
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # keep TensorFlow off any GPU

import jax
import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from mnv2_jax.tools.interop import export as export_lib  # noqa: E402
from mnv2_jax.tools.interop import keras as keras_interop  # noqa: E402
from mnv2_jax.tools.interop import tflite  # noqa: E402

# (alpha, input_shape, include_top, pooling, classes): every alpha Keras offers; odd (97, 71),
# non-square (64x80, 71x50) and even sizes; with and without the classifier.
CASES = {
    "a0.35_96": (0.35, (96, 96, 3), True, None, 1000),
    "a0.5_97odd": (0.5, (97, 97, 3), True, None, 10),
    "a0.75_64x80": (0.75, (64, 80, 3), True, None, 10),
    "a1.0_65x96_notop": (1.0, (65, 96, 3), False, None, 1000),
    "a1.3_64_notop_avg": (1.3, (64, 64, 3), False, "avg", 1000),
    "a1.4_71x50": (1.4, (71, 50, 3), True, None, 7),
}
REL_TOL = 1e-4  # relative to the output's largest magnitude, float32

# Keras' TF backend converts tensors with np.array(x) inside; NumPy 2 warns about it on every weight.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def _randomize_batch_norm(model, rng: np.random.Generator) -> None:
    """Random, trained-like batch norm: no layer is the identity and activations stay input-dependent.

    Random statistics alone are not enough: with Keras' glorot init the signal shrinks ~10x per
    block, and batch norm with statistics unrelated to it outputs mostly its own constants, which
    would hide a wrong padding or kernel layout. So gamma/beta are drawn first, then one
    training-mode pass with momentum 0 sets every moving mean/variance to the real batch
    statistics (as training would), and these are then perturbed.
    """
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        c = layer.gamma.shape[0]
        layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype(np.float32))
        layer.beta.assign(rng.normal(0.0, 0.2, c).astype(np.float32))
        layer.momentum = 0.0
    images = rng.uniform(-1, 1, (4, *model.input_shape[1:])).astype(np.float32)
    model(images, training=True)
    for layer in bns:
        layer.momentum = 0.999
        c = layer.gamma.shape[0]
        var = np.maximum(layer.moving_variance.numpy(), 1e-6)
        mean = layer.moving_mean.numpy() + rng.normal(0.0, 0.2, c) * np.sqrt(var)
        layer.moving_mean.assign(mean.astype(np.float32))
        layer.moving_variance.assign((var * rng.uniform(0.7, 1.4, c)).astype(np.float32))


@pytest.fixture(scope="module")
def keras_models():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    models = {}
    for name, (alpha, shape, top, pooling, classes) in CASES.items():
        model = keras.applications.MobileNetV2(
            input_shape=shape,
            alpha=alpha,
            include_top=top,
            weights=None,
            pooling=pooling,
            classes=classes,
            classifier_activation=None,
        )
        _randomize_batch_norm(model, rng)
        models[name] = model
    return models


@pytest.fixture(scope="module")
def converted(keras_models):
    return {name: keras_interop.from_keras(model) for name, model in keras_models.items()}


def _eval(module, variables, x, **kwargs):
    """The module in eval mode, jitted: one compile beats eager op-by-op dispatch several-fold here.

    XLA's own convs (`lax`) compile faster than the CPU default's shifted depthwise kernel; the
    kernels themselves are checked against each other in the layer tests.
    """
    module = module.clone(depthwise_impl="lax", pointwise_impl="lax")
    return jax.jit(functools.partial(module.apply, train=False, **kwargs))(variables, x)


def _ours(module, variables, x, include_top: bool, pooling: str | None) -> np.ndarray:
    logits, features = _eval(module, variables, x, return_features=True)
    if include_top:
        return np.asarray(logits)
    return np.asarray(features["pre_logits"] if pooling == "avg" else features["head"])


@pytest.mark.parametrize("name", list(CASES))
def test_from_keras_matches_keras(name, keras_models, converted):
    alpha, shape, top, pooling, classes = CASES[name]
    model = keras_models[name]
    module, variables = converted[name]
    assert module.arch.width == alpha
    assert module.arch.num_classes == (classes if top else 0)
    assert module.bn_epsilon == 1e-3 and module.bn_momentum == pytest.approx(0.999)
    # Every Keras weight is used exactly once: the same number of values on both sides.
    assert sum(a.size for a in jax.tree.leaves(variables)) == model.count_params()

    x = np.random.default_rng(1).uniform(-1, 1, (2, *shape)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    got = _ours(module, variables, x, top, pooling)
    assert got.shape == expected.shape
    scale = np.abs(expected).max()
    # The test means something only if the output depends on the input (see _randomize_batch_norm).
    assert np.abs(expected[0] - expected[1]).max() > 0.05 * scale
    np.testing.assert_array_less(np.abs(got - expected).max() / scale, REL_TOL)


def test_detect_width_and_structure_errors(keras_models):
    for name, (alpha, *_) in CASES.items():
        assert keras_interop.detect_width(keras_models[name]) == alpha
    not_mnv2 = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no layer 'Conv1'"):
        keras_interop.from_keras(not_mnv2)


def test_unknown_input_size_warns():
    model = keras.applications.MobileNetV2(
        input_shape=(None, None, 3), alpha=0.35, include_top=False, weights=None
    )
    with pytest.warns(UserWarning, match="no fixed input size"):
        module, _ = keras_interop.from_keras(model)
    assert module.arch.width == 0.35


def test_import_keras_weights_offline_message(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        # What keras.utils.get_file raises without network.
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3]")

    monkeypatch.setattr(keras.applications, "MobileNetV2", no_network)
    with pytest.raises(RuntimeError, match="could not download the Keras ImageNet weights") as info:
        keras_interop.import_keras_weights(1.0, 224, str(tmp_path / "imported"))
    message = str(info.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5" in message
    assert ".keras/models" in message
    assert not (tmp_path / "imported").exists()
    with pytest.raises(ValueError, match="resolution"):
        keras_interop.import_keras_weights(1.0, 100, str(tmp_path / "x"))
    with pytest.raises(ValueError, match="alpha"):
        keras_interop.import_keras_weights(0.6, 224, str(tmp_path / "x"))


def test_import_keras_weights_from_local_file(keras_models, converted, tmp_path):
    """The whole import path offline: a local weights file stands in for the download."""
    weights = str(tmp_path / "mnv2_0.35_96.weights.h5")
    keras_models["a0.35_96"].save_weights(weights)
    out = keras_interop.import_keras_weights(0.35, 96, str(tmp_path / "imported"), weights_path=weights)

    variables = keras_interop.load_imported(out)
    _, expected = converted["a0.35_96"]
    jax.tree.map(np.testing.assert_array_equal, variables, jax.tree.map(np.asarray, expected))

    module, _, config = keras_interop.load_imported_run(out)
    assert (config.width, config.resolution, config.num_classes) == (0.35, 96, 1000)
    assert config.dataset == "imagenet2012" and config.bn_momentum == pytest.approx(0.999)
    assert module.arch == converted["a0.35_96"][0].arch
    stored = json.loads((tmp_path / "imported" / "config.json").read_text())
    assert stored["provenance"]["weights"] == weights


def test_fold_batch_norm_matches_module_for_ablations():
    """Folding mirrors the module for every block wiring, not only the paper's."""
    from mnv2_jax.models.mobilenet_v2 import create_model

    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (2, 40, 40, 3)).astype(np.float32)
    for kwargs in (
        dict(residual="expansion", bottleneck_activation="relu6"),
        dict(residual="bottleneck", output_stride=8, expansion=3.0),
    ):
        module = create_model(
            width=0.35, num_classes=5, max_repeats=2, depthwise_impl="lax", pointwise_impl="lax", **kwargs
        )
        # Random variables from the shapes alone: tracing init is instant, running it is not.
        shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.PRNGKey(0), x)

        def randomize(path, leaf):
            name = path[-1].key
            if name in ("scale", "var"):  # trained-like batch norm: not the identity
                return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
            if name in ("bias", "mean"):
                return rng.normal(0.0, 0.2, leaf.shape).astype(np.float32)
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)

        variables = jax.tree_util.tree_map_with_path(randomize, shapes)
        apply_fn, folded = export_lib.fold_batch_norm(module, variables)
        expected = np.asarray(_eval(module, variables, x))
        got = np.asarray(jax.jit(apply_fn)(folded, x))
        np.testing.assert_array_less(np.abs(got - expected).max() / np.abs(expected).max(), REL_TOL)


@pytest.fixture(scope="module")
def float_export(converted, tmp_path_factory):
    module, variables = converted["a0.35_96"]
    out = tmp_path_factory.mktemp("export_float")
    return export_lib.export(variables, module, 96, str(out), format="tflite")


def test_export_float_tflite_and_savedmodel_match_jax(converted, float_export):
    module, variables = converted["a0.35_96"]
    report = float_export
    assert report["saved_model_max_rel_error"] < REL_TOL
    assert report["tflite_max_rel_error"] < REL_TOL
    # Independent check on fresh inputs, outside export's own verification.
    import tensorflow as tf

    x = np.random.default_rng(3).uniform(-1, 1, (3, 96, 96, 3)).astype(np.float32)
    expected = np.asarray(_eval(module, variables, x))
    scale = np.abs(expected).max()
    got_tflite = tflite.run(report["tflite"], x)
    served = tf.saved_model.load(report["saved_model"]).signatures["serving_default"]
    got_saved = served(images=tf.constant(x))["logits"].numpy()
    assert got_tflite.shape == got_saved.shape == expected.shape == (3, 1000)
    assert np.abs(got_tflite - expected).max() / scale < REL_TOL
    assert np.abs(got_saved - expected).max() / scale < REL_TOL
    with open(os.path.join(os.path.dirname(report["tflite"]), "export.json")) as f:
        assert json.load(f)["tflite_max_rel_error"] == report["tflite_max_rel_error"]


def test_export_int8_reports_agreement(converted, tmp_path):
    """Full-integer int8: all-int8 model, agreement with the float model reported honestly.

    Calibration here is 32 noise images through a random-weight net, so the
    agreement says little about real accuracy; the check is that quantization
    runs end to end, the figure is a rate, and the int8 logits track the
    float ones (positively correlated), not that a particular rate is reached.
    """
    module, variables = converted["a0.35_96"]
    calibration = np.random.default_rng(4).uniform(-1, 1, (32, 96, 96, 3)).astype(np.float32)
    report = export_lib.export(
        variables, module, 96, str(tmp_path), format="tflite", quantize="int8", calibration=calibration
    )
    assert 0.0 <= report["int8_top1_agreement"] <= 1.0
    assert report["tflite"].endswith("model_int8.tflite")
    interp = tflite.interpreter(model_path=report["tflite"])
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8
    got = tflite.run(interp, calibration[:8])
    expected = np.asarray(_eval(module, variables, calibration[:8]))
    corr = np.corrcoef(got.ravel(), expected.ravel())[0, 1]
    assert corr > 0.5, corr


def test_export_argument_errors(converted, tmp_path):
    module, variables = converted["a0.35_96"]
    with pytest.raises(ValueError, match="format"):
        export_lib.export(variables, module, 96, str(tmp_path), format="onnx")
    with pytest.raises(ValueError, match="quantize"):
        export_lib.export(variables, module, 96, str(tmp_path), format="savedmodel", quantize="int8")
    with pytest.raises(ValueError, match="calibration"):
        export_lib.export(variables, module, 96, str(tmp_path), calibration=np.zeros((4, 64, 64, 3)))


def test_tflite_benchmark(float_export):
    result = tflite.benchmark(float_export["tflite"], threads=1, repeats=5, warmup=2)
    assert result["latency_ms_median"] > 0 and result["latency_ms_p90"] >= result["latency_ms_min"] > 0
    assert result["threads"] == 1 and result["input_shape"] == [1, 96, 96, 3]
    json.dumps(result)
    with pytest.raises(ValueError, match="no such file"):
        tflite.benchmark("/nonexistent.tflite")
