"""Export to a TF SavedModel and a TFLite flatbuffer (float32 or full-integer int8).

Route (jax 0.10 / TF 2.21): batch norm is folded into the convs
(`mnv2_jax.models.folded`), the folded network is a plain JAX function of
the input with the weights as constants, `jax2tf.convert` wraps its
StableHLO in one `XlaCallModule` op (native serialization; jax2tf's older
TF-graph mode has been removed from JAX), and `tf.saved_model.save` writes
it. `tf.lite.TFLiteConverter` legalizes that StableHLO into TFLite builtins
-- CONV_2D and DEPTHWISE_CONV_2D with the bias and ReLU6 fused, the TF
'SAME' padding recognised -- so the flatbuffer is the graph a hand-written
TFLite MobileNetV2 would have. int8 is TFLite's full-integer post-training
quantization: every op int8 (the converter fails rather than leave a float
op), int8 input and output, activation ranges from a representative
(calibration) set.

Why fold and not export `module.apply`: inference needs no batch norm, and
folded convs are what TFLite fuses and what int8 quantizes per channel;
unfolded, the converter would see separate multiply/add ops. The folded
function runs with XLA's convolutions (its default `lax` implementations),
not the shifted-slice depthwise kernel CPU training uses, because the
converter maps a convolution op to DEPTHWISE_CONV_2D but would keep nine
strided slices, multiplies and adds as separate ops.

Every export checks itself: the SavedModel and the TFLite model run on
the calibration (or random) images, and their outputs are compared with
the unfolded JAX model's (`export.json` records the errors, and a float
export that disagrees by more than 1e-3 relative fails).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from mnv2_jax.models.folded import fold_batch_norm

FORMATS = ("tflite", "savedmodel")
QUANTIZATIONS = (None, "int8")
FLOAT_TOLERANCE = 1e-3  # relative to the output's scale; float32 exports agree to ~1e-6


# --- Conversion --------------------------------------------------------------------------------


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from mnv2_jax import quiet

    tf = quiet.import_tensorflow()  # without its C++ start-up banners

    # TensorFlow must not take a GPU from JAX (DESIGN.md section 4); tensorflow-cpu sees none anyway.
    tf.config.set_visible_devices([], "GPU")
    return tf


def _calibration_images(calibration: Any, resolution: int, count: int = 64) -> tuple[np.ndarray, bool]:
    """Calibration images as one float32 array; random ones (flagged) when none are given."""
    if calibration is None:
        rng = np.random.default_rng(0)
        return rng.uniform(-1, 1, (count, resolution, resolution, 3)).astype(np.float32), True
    if isinstance(calibration, np.ndarray) or hasattr(calibration, "shape"):
        images = np.asarray(calibration, np.float32)
    else:
        images = np.concatenate(
            [np.asarray(b, np.float32).reshape(-1, resolution, resolution, 3) for b in calibration]
        )
    if images.ndim != 4 or images.shape[1:] != (resolution, resolution, 3):
        raise ValueError(
            f"calibration: expected images of shape (N, {resolution}, {resolution}, 3) in [-1, 1], "
            f"got {images.shape}"
        )
    return images, False


def inference_function(module: Any, variables: dict) -> tuple[Callable, dict, str]:
    """`(apply_fn, params, output)`: what is exported, `apply_fn(params, images)`, and the name of
    its output.

    A classifier (`MobileNetV2`) is exported batch-norm-folded (`models.folded`). A segmenter
    (`MobileDeepLabV3`: backbone, DeepLabv3 head and the align-corners upsampling) is exported as
    its eval-mode `apply` with XLA's convolutions; TFLite's converter folds the batch norms' constant
    scales and offsets into the convolutions. The detector (`SSDLite`), whose TFLite form carries
    TF's detection post-processing op, exports through `detection_export` (`export` sends it
    there); other models are refused.
    """
    import jax.numpy as jnp

    from mnv2_jax.models.mobilenet_v2 import MobileNetV2
    from mnv2_jax.tasks.segmentation.head import MobileDeepLabV3
    from mnv2_jax.tools.interop import detection_export

    if detection_export.is_detector(module):  # a MobileNetV2 subclass: ask first
        raise ValueError(
            "export: the detector exports through detection_export.export (export() sends it there)"
        )
    if isinstance(module, MobileNetV2):
        apply_fn, folded = fold_batch_norm(module, variables)
        return apply_fn, folded, "logits" if module.arch.num_classes else "pre_logits"
    if isinstance(module, MobileDeepLabV3):
        plain = module.clone(depthwise_impl="lax", pointwise_impl="lax", dtype=jnp.float32)
        return (lambda v, x: plain.apply(v, x, train=False)), variables, "per_pixel_logits"
    raise ValueError(
        f"export: {type(module).__name__} models cannot be exported; classification (MobileNetV2), "
        "segmentation (MobileDeepLabV3) and detection (SSDLite) runs can"
    )


def _relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / max(float(np.abs(ref).max()), 1e-12))


def to_saved_model(apply_fn: Callable, params: dict, resolution: int, path: str) -> Any:
    """Write a SavedModel with signature `serving_default(images[b, r, r, 3]) -> {'logits'}` (for a
    segmenter, logits per pixel: (b, r, r, classes)).

    The batch is symbolic (`b`), so the SavedModel serves any batch size;
    the weights are constants in the serialized StableHLO.
    """
    import jax
    from jax.experimental import jax2tf

    tf = _tf()
    params = jax.tree.map(np.asarray, params)
    converted = jax2tf.convert(
        lambda x: apply_fn(params, x),
        polymorphic_shapes=["(b, ...)"],
        with_gradient=False,
        # The SavedModel runs where TF runs: on CPU here, whatever backend JAX exported from.
        native_serialization_platforms=("cpu",),
    )
    spec = tf.TensorSpec((None, resolution, resolution, 3), tf.float32, name="images")
    serve = tf.function(lambda images: {"logits": converted(images)}, input_signature=[spec], autograph=False)
    holder = tf.Module()
    holder.serve = serve
    tf.saved_model.save(holder, path, signatures={"serving_default": serve.get_concrete_function()})
    return holder


def to_tflite(
    apply_fn: Callable,
    params: dict,
    resolution: int,
    quantize: str | None = None,
    calibration: np.ndarray | None = None,
) -> bytes:
    """A TFLite flatbuffer with batch 1 (how phones run it; fixed shapes let XNNPACK plan ahead)."""
    import jax
    from jax.experimental import jax2tf

    tf = _tf()
    params = jax.tree.map(np.asarray, params)
    converted = jax2tf.convert(
        lambda x: apply_fn(params, x), with_gradient=False, native_serialization_platforms=("cpu",)
    )
    spec = tf.TensorSpec((1, resolution, resolution, 3), tf.float32, name="images")
    serve = tf.function(lambda images: {"logits": converted(images)}, input_signature=[spec], autograph=False)
    holder = tf.Module()
    holder.serve = serve
    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], holder)
    if quantize == "int8":
        if calibration is None:
            raise ValueError("int8 quantization needs calibration images")

        def representative():
            for image in calibration:
                yield [image[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return converter.convert()


def export(
    variables: dict,
    module: Any,
    resolution: int,
    out_dir: str,
    format: str = "tflite",
    quantize: str | None = None,
    calibration: np.ndarray | Iterable[np.ndarray] | None = None,
    nms: Any = None,
) -> dict:
    """Export `module` with `variables` for `resolution` x `resolution` inputs in [-1, 1].

    Writes into `out_dir`: `saved_model/` (always; any batch size), for
    `format='tflite'` also `model.tflite` or `model_int8.tflite` (batch 1,
    converted from the same jax2tf function), and `export.json` (the
    returned report). `calibration`:
    float images (N, r, r, 3) in [-1, 1], an array or an iterable of batches;
    it drives the int8 activation ranges and the checks. Without it, 64
    uniform-noise images are used -- enough to check the conversion, but real
    images give int8 ranges (and agreement figures) that mean something.

    The report holds `max_rel_error` per artefact (vs the unfolded JAX model,
    relative to the output's largest magnitude) and, for int8 with a
    classifier, `int8_top1_agreement`: the fraction of calibration images
    whose int8 top-1 class equals the float JAX model's (for a segmenter,
    `int8_pixel_agreement`: the same per pixel).

    A detector (`SSDLite`) goes to `detection_export.export`: float32 only, `calibration` gives
    the images its detections are checked on, `nms` the task's `NMSSettings`.
    """
    if format not in FORMATS:
        raise ValueError(f"format: must be one of {FORMATS}, got {format!r}")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize: must be one of {QUANTIZATIONS}, got {quantize!r}")
    if quantize and format != "tflite":
        raise ValueError("quantize='int8' applies to format='tflite' only")
    from mnv2_jax.tools.interop import detection_export

    if detection_export.is_detector(module):
        if quantize:
            raise ValueError("quantize='int8': detection exports are float32 only")
        images = None if calibration is None else _calibration_images(calibration, resolution)[0]
        return detection_export.export(variables, module, resolution, out_dir, format, images, nms)
    apply_fn, params, output = inference_function(module, variables)
    import jax
    import jax.numpy as jnp

    from mnv2_jax.tools.interop import tflite

    tf = _tf()
    images, synthetic = _calibration_images(calibration, resolution)
    os.makedirs(out_dir, exist_ok=True)
    # The reference: the unfolded module in eval mode, float32 (the export's precision, even for a
    # module that trains in bfloat16), XLA's own convs (any backend).
    reference_module = module.clone(depthwise_impl="lax", pointwise_impl="lax", dtype=jnp.float32)
    reference_fn = jax.jit(lambda v, x: reference_module.apply(v, x, train=False))
    reference = np.concatenate(
        [np.asarray(reference_fn(variables, images[i : i + 16])) for i in range(0, len(images), 16)]
    )

    num_classes = getattr(module, "num_classes", None) or module.arch.num_classes
    report: dict[str, Any] = {
        "format": format,
        "quantize": quantize,
        "resolution": resolution,
        "width": module.arch.width,
        "num_classes": num_classes,
        "output": output,
        "input": "images (batch, resolution, resolution, 3), float32 in [-1, 1]",
        "check_images": len(images),
        "check_images_synthetic": synthetic,
        "route": "jax2tf.convert (native serialization, StableHLO in XlaCallModule) -> tf.saved_model.save; "
        "tf.lite.TFLiteConverter.from_concrete_functions (StableHLO legalized to TFLite builtins)",
        "versions": {"jax": jax.__version__, "tensorflow": tf.__version__},
    }

    saved_model_dir = os.path.join(out_dir, "saved_model")
    to_saved_model(apply_fn, params, resolution, saved_model_dir)
    loaded = tf.saved_model.load(saved_model_dir)
    served = loaded.signatures["serving_default"](images=tf.constant(images[:16]))["logits"].numpy()
    report["saved_model"] = saved_model_dir
    report["saved_model_max_rel_error"] = _relative_error(served, reference[:16])

    if format == "tflite":
        flatbuffer = to_tflite(apply_fn, params, resolution, quantize, images)
        path = os.path.join(out_dir, "model_int8.tflite" if quantize else "model.tflite")
        with open(path, "wb") as f:
            f.write(flatbuffer)
        out = tflite.run(flatbuffer, images if quantize else images[:16])
        report["tflite"] = path
        report["tflite_bytes"] = len(flatbuffer)
        report["tflite_max_rel_error"] = _relative_error(out, reference[: len(out)])
        if quantize and output == "per_pixel_logits":
            agreement = np.argmax(out, axis=-1) == np.argmax(reference[: len(out)], axis=-1)
            report["int8_pixel_agreement"] = float(agreement.mean())
        elif quantize and module.arch.num_classes:
            float_top1 = np.argmax(reference, axis=-1)
            report["int8_top1_agreement"] = float((np.argmax(out, axis=-1) == float_top1).mean())
            # How many classes the float model picks on these images: an untrained net (or noise
            # images) often picks one class for all of them, which makes agreement trivially high.
            report["float_top1_distinct_classes"] = len(np.unique(float_top1))
    with open(os.path.join(out_dir, "export.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    if report["saved_model_max_rel_error"] > FLOAT_TOLERANCE or (
        not quantize and report.get("tflite_max_rel_error", 0.0) > FLOAT_TOLERANCE
    ):
        raise RuntimeError(f"export check failed: outputs differ from the JAX model ({report})")
    return report


def calibration_from_dataset(config: Any, count: int = 256) -> np.ndarray:
    """`count` real images (float32 in [-1, 1], eval preprocessing) from the config's eval split.

    Real images are what int8 calibration needs: activation ranges measured
    on noise clip real activations, and agreement measured on noise says
    little. Raises ValueError (from `mnv2_jax.data.input_pipeline`) when the dataset is not
    available; callers may fall back to `calibration=None`.
    """
    from mnv2_jax.data import input_pipeline as data

    images: list[np.ndarray] = []
    taken = 0
    for batch in data.eval_iterator(config):
        real = batch["image"][batch["mask"] > 0]
        images.append(real[: count - taken])
        taken += len(images[-1])
        if taken >= count:
            break
    if not taken:
        raise ValueError(f"dataset {config.dataset!r}: its eval split yielded no images for calibration")
    return np.concatenate(images).astype(np.float32)


def load_for_export(path: str) -> tuple[Any, dict, Any]:
    """`(module, variables, config)` from a run's workdir or an imported-weights directory."""
    if os.path.exists(os.path.join(path, "variables.msgpack")):
        from mnv2_jax.tools.interop.keras import load_imported_run

        return load_imported_run(path)
    from mnv2_jax import load_run

    return load_run(path)
