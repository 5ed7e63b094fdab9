"""TFLite export of the SSDLite detector with TFLite's detection post-processing op.

What phones run: one TFLite model, image in, detections out. The network (`jax2tf`, its
StableHLO legalized to TFLite builtins, as for the classifier) produces box encodings
`[1, A, 4]` and class scores after the sigmoid `[1, A, classes + 1]` (background in column 0),
and TFLite's custom op `TFLite_Detection_PostProcess` (built into every TFLite interpreter)
decodes them against constant anchors `[A, 4]` in centre-size form `(ycenter, xcenter, h, w)`
and runs NMS. Outputs, in the order and form TF Object Detection API models have them:
`TFLite_Detection_PostProcess` boxes `[1, M, 4]` (ymin, xmin, ymax, xmax, normalised),
`:1` classes `[1, M]` (0-based, background excluded, float), `:2` scores `[1, M]`, `:3` the
number of detections `[1]`; rows past it are zero.

How the op gets into the model: TF's Object Detection API (TF2, `export_tflite_graph_lib_tf2`)
marks an empty `tf.function` with `experimental_implements='name: "TFLite_Detection_PostProcess"
attr {...}'`, which the converter's composite-function pass replaces with the op. That does not
survive a model converted through `jax2tf` with TF 2.21's converter: a graph holding an
`XlaCallModule` goes first through the converter's StableHLO passes, whose function inliner
inlines the marked function before composite functions are looked for, so the op is lost and
its placeholder outputs are constant-folded (the flatbuffer holds no network and no op). This
module therefore takes the route of the Object Detection API's TF1 exporter
(`export_tflite_ssd_graph --add_postprocessing_op`): the op is a node of the frozen graph, with
its attributes, after the network's outputs, and `TFLiteConverter.from_frozen_graph` with
`allow_custom_ops` writes it as the custom op with those attributes as its options.

Where TFLite's op differs from `tasks.detection.postprocess`, and the settings that make the
two agree:
* NMS: the op's default (`use_regular_nms=false`, what the zoo models ship) is 'fast' NMS: one
  class-agnostic NMS over each anchor's best class score, `max_classes_per_detection` classes
  per kept box. Ours is per-class NMS, then the best over all classes: the op's regular NMS
  (`use_regular_nms=true`, `detections_per_class` per class, `max_detections` in all), which
  this export uses. `max_classes_per_detection` (1) only matters to fast NMS.
* Clipping: the op decodes boxes without clipping them; ours clips decoded boxes to [0, 1]
  before NMS (as TF's evaluation clips to the image window). The exported network therefore
  decodes, clips and re-encodes its boxes (the same Faster R-CNN coder, scales 10, 10, 5, 5) so
  that the op's own decoding yields the clipped boxes, and its IoUs are ours.
* Score threshold: the op keeps scores `>=` the threshold, ours `>`; with the default 1e-8 on
  sigmoid scores, that differs only on exact equality.
* Batch: the op runs on batch 1 (TFLite's kernel), so the TFLite model takes one image.

The check on export runs the TFLite model and the JAX model with `postprocess.detect` on the
same images and matches their detections above a score threshold: every detection of one must
have a detection of the other with the same class, the same box (to `BOX_TOLERANCE`) and the
same score (to `SCORE_TOLERANCE`). `export.json` records the errors; a disagreement raises.
The SavedModel written beside it serves the network's raw outputs (any batch): box encodings
against `anchors.ssd_anchors(resolution)` and class scores, checked against JAX too.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

POSTPROCESS_OP = "TFLite_Detection_PostProcess"
OUTPUTS = ("detection_boxes", "detection_classes", "detection_scores", "num_detections")
BOX_TOLERANCE = 1e-4  # normalised coordinates
SCORE_TOLERANCE = 1e-4
CHECK_MIN_SCORE = 1e-3  # detections compared: those scoring above this
CHECK_IMAGES = 8
RAW_TOLERANCE = 1e-3  # SavedModel raw outputs, relative to their scale


def is_detector(module: Any) -> bool:
    from mnv2_jax.tasks.detection.head import SSDLite

    return isinstance(module, SSDLite)


def _eval_module(module: Any) -> Any:
    """The module as exported and as the reference runs it: float32, XLA's own convolutions."""
    import jax.numpy as jnp

    return module.clone(depthwise_impl="lax", pointwise_impl="lax", dtype=jnp.float32)


def raw_outputs_function(module: Any, variables: dict, clip: bool) -> Callable:
    """`images -> (box_encodings [B, A, 4], class_scores [B, A, classes + 1])` in JAX.

    `clip=True` (the TFLite form): the encodings are those of the decoded boxes clipped to the
    image, so a decoder without clipping (TFLite's op) gets our clipped boxes back.
    """
    import jax
    import jax.numpy as jnp

    from mnv2_jax.tasks.detection import anchors as anchors_lib
    from mnv2_jax.tasks.detection import box_coder

    plain = _eval_module(module)
    variables = jax.tree.map(np.asarray, variables)

    def raw(images):
        out = plain.apply(variables, images, train=False)
        encodings = out["box_encodings"]
        if clip:
            anchors = jnp.asarray(anchors_lib.ssd_anchors(images.shape[1]))
            boxes = jnp.clip(box_coder.decode(encodings, anchors), 0.0, 1.0)
            encodings = box_coder.encode(boxes, anchors)
        return encodings, jax.nn.sigmoid(out["class_logits"])

    return raw


def centre_size_anchors(resolution: int) -> np.ndarray:
    """The op's anchors input: `[A, 4]` float32 `(ycenter, xcenter, height, width)`."""
    from mnv2_jax.tasks.detection import anchors as anchors_lib
    from mnv2_jax.tasks.detection import box_coder

    return np.stack(box_coder.center_size(anchors_lib.ssd_anchors(resolution)), axis=-1).astype(np.float32)


def postprocess_attributes(settings: Any, num_classes: int) -> dict[str, Any]:
    """The op's attributes for `NMSSettings` `settings` (see the module docstring)."""
    from mnv2_jax.tasks.detection import box_coder

    y_scale, x_scale, h_scale, w_scale = box_coder.SCALES
    return {
        "max_detections": int(settings.max_detections),
        "max_classes_per_detection": 1,
        "detections_per_class": int(settings.max_per_class),
        "use_regular_nms": True,
        "nms_score_threshold": float(settings.score_threshold),
        "nms_iou_threshold": float(settings.iou_threshold),
        "num_classes": int(num_classes),
        "y_scale": float(y_scale),
        "x_scale": float(x_scale),
        "h_scale": float(h_scale),
        "w_scale": float(w_scale),
    }


def _postprocess_node(graph_def: Any, inputs: list[str], attributes: dict[str, Any]) -> None:
    """Append the op to `graph_def` as a node (TF has no kernel for it; the converter writes it
    as a TFLite custom op with the attributes as its options)."""
    from tensorflow.core.framework import attr_value_pb2, types_pb2

    node = graph_def.node.add()
    node.op = POSTPROCESS_OP
    node.name = POSTPROCESS_OP
    node.input.extend(inputs)
    node.attr["_output_types"].list.type.extend([types_pb2.DT_FLOAT] * 4)
    for key, value in attributes.items():
        if isinstance(value, bool):
            node.attr[key].CopyFrom(attr_value_pb2.AttrValue(b=value))
        elif isinstance(value, int):
            node.attr[key].CopyFrom(attr_value_pb2.AttrValue(i=value))
        else:
            node.attr[key].CopyFrom(attr_value_pb2.AttrValue(f=value))


def to_tflite(module: Any, variables: dict, resolution: int, settings: Any) -> bytes:
    """The detector as a TFLite flatbuffer: `images [1, r, r, 3]` in [-1, 1] -> the op's four
    outputs (see the module docstring)."""
    from jax.experimental import jax2tf

    from mnv2_jax.tools.interop.export import _tf

    tf = _tf()
    converted = jax2tf.convert(
        raw_outputs_function(module, variables, clip=True),
        with_gradient=False,
        native_serialization_platforms=("cpu",),
    )

    def network(images):
        encodings, scores = converted(images)
        return (
            tf.identity(encodings, name="box_encodings"),
            tf.identity(scores, name="class_predictions"),
            tf.constant(centre_size_anchors(resolution), name="anchors"),
        )

    spec = tf.TensorSpec((1, resolution, resolution, 3), tf.float32, name="images")
    concrete = tf.function(network, autograph=False).get_concrete_function(spec)
    graph_def = concrete.graph.as_graph_def()
    num_classes = int(module.num_slots) - 1
    _postprocess_node(
        graph_def, [t.op.name for t in concrete.outputs], postprocess_attributes(settings, num_classes)
    )
    outputs = [POSTPROCESS_OP] + [f"{POSTPROCESS_OP}:{i}" for i in range(1, 4)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tflite_graph.pb")
        with open(path, "wb") as f:
            f.write(graph_def.SerializeToString())
        converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            path, [concrete.inputs[0].op.name], outputs, {concrete.inputs[0].op.name: list(spec.shape)}
        )
        converter.allow_custom_ops = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flatbuffer = converter.convert()
    if POSTPROCESS_OP.encode() not in flatbuffer:
        raise RuntimeError(f"TFLite conversion lost the {POSTPROCESS_OP} op")
    return flatbuffer


def run_tflite(model: str | bytes, images: np.ndarray) -> dict[str, np.ndarray]:
    """The op's outputs for each image: `detection_boxes [N, M, 4]`, `detection_classes [N, M]`
    (int32), `detection_scores [N, M]`, `num_detections [N]` (int32)."""
    from mnv2_jax.tools.interop import tflite

    if isinstance(model, str):
        interp = tflite.interpreter(model_path=model)
    else:
        interp = tflite.interpreter(model_content=bytes(model))
    (inp,) = interp.get_input_details()
    # Outputs by name: the op's, then ':1', ':2', ':3'.
    by_name = {d["name"]: d["index"] for d in interp.get_output_details()}
    indices = [by_name[POSTPROCESS_OP]] + [by_name[f"{POSTPROCESS_OP}:{i}"] for i in range(1, 4)]
    found: dict[str, list] = {k: [] for k in OUTPUTS}
    for image in np.asarray(images, np.float32):
        interp.set_tensor(inp["index"], image[None])
        interp.invoke()
        for key, index in zip(OUTPUTS, indices):
            found[key].append(np.array(interp.get_tensor(index)[0]))
    out = {k: np.stack(v) for k, v in found.items()}
    out["detection_classes"] = out["detection_classes"].astype(np.int32)
    out["num_detections"] = out["num_detections"].reshape(-1).astype(np.int32)
    return out


def jax_reference(
    module: Any, variables: dict, images: np.ndarray, settings: Any
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """What the export is checked against, from the float32 eval-mode model in one jitted call:
    its raw outputs (`box_encodings`, `class_scores` after the sigmoid) and its detections
    (`postprocess.detect`, keyed like `run_tflite`'s)."""
    import jax

    from mnv2_jax.tasks.detection import anchors as anchors_lib
    from mnv2_jax.tasks.detection import postprocess

    plain = _eval_module(module)
    anchors = anchors_lib.ssd_anchors(images.shape[1])

    @jax.jit
    def reference(v, x):
        out = plain.apply(v, x, train=False)
        found = postprocess.detect(out["box_encodings"], out["class_logits"], anchors, settings)
        return (out["box_encodings"], jax.nn.sigmoid(out["class_logits"])), found

    (encodings, scores), found = reference(variables, images)
    raw = {"box_encodings": np.asarray(encodings), "class_scores": np.asarray(scores)}
    return raw, {
        "detection_boxes": np.asarray(found["boxes"]),
        "detection_classes": np.asarray(found["classes"]),
        "detection_scores": np.asarray(found["scores"]),
        "num_detections": np.asarray(found["num_detections"]),
    }


def _match(a: dict, b: dict, i: int, cut: float) -> tuple[int, float, float]:
    """Detections of `a` in image `i` scoring above `cut` that `b` lacks, and the largest box and
    score errors of those it has (same class, nearest box)."""
    missing, box_error, score_error = 0, 0.0, 0.0
    b_boxes = b["detection_boxes"][i, : b["num_detections"][i]]
    b_classes = b["detection_classes"][i, : b["num_detections"][i]]
    b_scores = b["detection_scores"][i, : b["num_detections"][i]]
    for row in range(int(a["num_detections"][i])):
        score = float(a["detection_scores"][i, row])
        if score <= cut:
            continue
        same = np.flatnonzero(b_classes == a["detection_classes"][i, row])
        errors = np.abs(b_boxes[same] - a["detection_boxes"][i, row]).max(axis=-1) if len(same) else []
        if not len(same) or errors.min() > BOX_TOLERANCE:
            missing += 1
            continue
        best = same[int(np.argmin(errors))]
        box_error = max(box_error, float(errors.min()))
        score_error = max(score_error, abs(float(b_scores[best]) - score))
    return missing, box_error, score_error


def compare_detections(
    tflite_out: dict[str, np.ndarray], reference: dict[str, np.ndarray], min_score: float = CHECK_MIN_SCORE
) -> dict[str, Any]:
    """How far TFLite's detections are from the reference's, both ways, above `min_score`.

    Where the reference's list is full (`max_detections` rows), detections within
    `SCORE_TOLERANCE` of its last score are left out: near-equal scores may sort either side
    of the cut.
    """
    out = {
        "compared_detections": 0,
        "missing_in_tflite": 0,
        "missing_in_jax": 0,
        "max_box_error": 0.0,
        "max_score_error": 0.0,
        "num_detections_equal": 0,
    }
    rows = reference["detection_scores"].shape[1]
    for i in range(len(reference["num_detections"])):
        cut = min_score
        for found in (reference, tflite_out):
            if int(found["num_detections"][i]) >= rows:
                cut = max(cut, float(found["detection_scores"][i, rows - 1]) + SCORE_TOLERANCE)
        out["compared_detections"] += int(
            np.sum(reference["detection_scores"][i, : reference["num_detections"][i]] > cut)
        )
        missing, box_error, score_error = _match(reference, tflite_out, i, cut)
        out["missing_in_tflite"] += missing
        out["max_box_error"] = max(out["max_box_error"], box_error)
        out["max_score_error"] = max(out["max_score_error"], score_error)
        missing, _, _ = _match(tflite_out, reference, i, cut)
        out["missing_in_jax"] += missing
        out["num_detections_equal"] += int(tflite_out["num_detections"][i] == reference["num_detections"][i])
    out["images"] = len(reference["num_detections"])
    out["min_score"] = min_score
    out["passed"] = (
        out["missing_in_tflite"] == 0
        and out["missing_in_jax"] == 0
        and out["max_box_error"] <= BOX_TOLERANCE
        and out["max_score_error"] <= SCORE_TOLERANCE
    )
    return out


def to_saved_model(module: Any, variables: dict, resolution: int, path: str) -> None:
    """A SavedModel `serving_default(images[b, r, r, 3]) -> {'box_encodings', 'class_scores'}`:
    the network's raw outputs (no clipping, no NMS), any batch size."""
    from jax.experimental import jax2tf

    from mnv2_jax.tools.interop.export import _tf

    tf = _tf()
    converted = jax2tf.convert(
        raw_outputs_function(module, variables, clip=False),
        polymorphic_shapes=["(b, ...)"],
        with_gradient=False,
        native_serialization_platforms=("cpu",),
    )

    def serve(images):
        encodings, scores = converted(images)
        return {"box_encodings": encodings, "class_scores": scores}

    spec = tf.TensorSpec((None, resolution, resolution, 3), tf.float32, name="images")
    holder = tf.Module()
    holder.serve = tf.function(serve, input_signature=[spec], autograph=False)
    tf.saved_model.save(holder, path, signatures={"serving_default": holder.serve.get_concrete_function()})


def check_images(config: Any, count: int = CHECK_IMAGES) -> np.ndarray:
    """`count` images of the run's eval split (float32 in [-1, 1], eval preprocessing)."""
    from mnv2_jax.tasks import get_task

    images: list[np.ndarray] = []
    taken = 0
    for batch in get_task(config).eval_iterator():
        real = batch["image"][batch["mask"] > 0][: count - taken]
        images.append(real)
        taken += len(real)
        if taken >= count:
            break
    if not taken:
        raise ValueError(f"dataset {config.dataset!r}: its eval split yielded no images")
    return np.concatenate(images).astype(np.float32)


def export(
    variables: dict,
    module: Any,
    resolution: int,
    out_dir: str,
    format: str = "tflite",
    images: np.ndarray | None = None,
    settings: Any = None,
) -> dict[str, Any]:
    """Export the detector: `saved_model/` (raw outputs), for `format='tflite'` also
    `model.tflite` (with the post-processing op), and `export.json`, the returned report.

    `images`: float images `(N, r, r, 3)` in [-1, 1] to check on (the first `CHECK_IMAGES`);
    without them, uniform noise (flagged in the report). `settings`: the task's `NMSSettings`
    (default: the config defaults, IoU 0.6, 100 per class and in all). Raises RuntimeError
    when the TFLite detections or the SavedModel's outputs disagree with JAX's.
    """
    import jax

    from mnv2_jax.tasks.detection import anchors as anchors_lib
    from mnv2_jax.tasks.detection.postprocess import NMSSettings
    from mnv2_jax.tools.interop.export import _calibration_images, _relative_error, _tf

    tf = _tf()
    settings = settings or NMSSettings()
    anchors_lib.feature_map_sizes(resolution)  # a clear error for a resolution too small
    images, synthetic = _calibration_images(images, resolution, CHECK_IMAGES)
    images = images[:CHECK_IMAGES]
    os.makedirs(out_dir, exist_ok=True)
    num_classes = int(module.num_slots) - 1
    report: dict[str, Any] = {
        "format": format,
        "quantize": None,
        "resolution": resolution,
        "width": module.arch.width,
        "num_classes": num_classes,
        "num_anchors": anchors_lib.num_anchors(resolution),
        "output": "detections",
        "input": "images (1, resolution, resolution, 3), float32 in [-1, 1]",
        "check_images": len(images),
        "check_images_synthetic": synthetic,
        "route": "jax2tf.convert (native serialization) -> frozen graph + TFLite_Detection_PostProcess node "
        "-> tf.compat.v1.lite.TFLiteConverter.from_frozen_graph (allow_custom_ops)",
        "versions": {"jax": jax.__version__, "tensorflow": tf.__version__},
    }

    saved_model_dir = os.path.join(out_dir, "saved_model")
    to_saved_model(module, variables, resolution, saved_model_dir)
    served = tf.saved_model.load(saved_model_dir).signatures["serving_default"](images=tf.constant(images))
    raw, reference = jax_reference(module, variables, images, settings)
    report["saved_model"] = saved_model_dir
    report["saved_model_outputs"] = "box_encodings (b, anchors, 4), class_scores (b, anchors, classes + 1)"
    report["saved_model_max_rel_error"] = max(_relative_error(served[k].numpy(), raw[k]) for k in raw)

    failed = report["saved_model_max_rel_error"] > RAW_TOLERANCE
    if format == "tflite":
        flatbuffer = to_tflite(module, variables, resolution, settings)
        path = os.path.join(out_dir, "model.tflite")
        with open(path, "wb") as f:
            f.write(flatbuffer)
        report["tflite"] = path
        report["tflite_bytes"] = len(flatbuffer)
        report["tflite_outputs"] = {
            POSTPROCESS_OP: "detection_boxes (1, max_detections, 4): ymin, xmin, ymax, xmax in [0, 1]",
            f"{POSTPROCESS_OP}:1": "detection_classes (1, max_detections): 0-based, background excluded",
            f"{POSTPROCESS_OP}:2": "detection_scores (1, max_detections)",
            f"{POSTPROCESS_OP}:3": "num_detections (1,)",
        }
        report["postprocess"] = postprocess_attributes(settings, num_classes)
        found = run_tflite(flatbuffer, images)
        report["tflite_check"] = compare_detections(found, reference)
        failed = failed or not report["tflite_check"]["passed"]
    with open(os.path.join(out_dir, "export.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    if failed:
        raise RuntimeError(f"export check failed: the export disagrees with the JAX detector ({report})")
    return report
