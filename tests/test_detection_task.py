"""The detection task end to end: the offline dataset, the input pipeline (offline and `coco/2017`
through `tfds.testing.mock_data`), COCO AP through pycocotools, the weight-decay rule, the `tf_od`
recipe, errors naming their key, and `mnv2 train` running the paper's preset on (mocked) COCO."""

from __future__ import annotations

import json
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import ml_collections
import numpy as np
import pytest

from mnv2_jax import cli
from mnv2_jax import config as config_lib
from mnv2_jax.data.datasets import mnist_detect_offline as offline
from mnv2_jax.data.datasets import mnist_offline
from mnv2_jax.tasks import get_task
from mnv2_jax.tasks.detection import input as detection_input
from mnv2_jax.tasks.detection.evaluator import coco_ap
from mnv2_jax.train import optim

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFLINE_CONFIG = os.path.join(REPO, "configs", "detection", "offline.py")
COCO_CONFIG = os.path.join(REPO, "configs", "detection", "coco.py")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    path = os.environ.get("MNV2_TEST_DATA_DIR") or os.environ.get("TFDS_DATA_DIR")
    return path or str(tmp_path_factory.mktemp("tfds"))


def offline_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
    values = {
        "dataset": "mnist_detect_offline/tiny",
        "data_dir": data_dir,
        "resolution": 64,
        "batch_size": 8,
        "eval_batch_size": 16,
        "shuffle_buffer": 128,
        **overrides,
    }
    return config_lib.apply_overrides(config_lib.load_config(OFFLINE_CONFIG), values)


# ------------------------------------------------------------------------------------ offline data
def test_canvases_are_deterministic_real_and_split_apart():
    a, b = offline.make_canvas("train", 7), offline.make_canvas("train", 7)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["image"].shape == (128, 128, 3) and a["image"].dtype == np.uint8
    _, labels = mnist_offline.load_arrays()
    for split in ("train", "test"):
        for index in range(6):
            canvas = offline.make_canvas(split, index)
            boxes = canvas["boxes"]
            assert 1 <= len(boxes) <= offline.MAX_OBJECTS
            assert np.all((boxes >= 0) & (boxes <= 1)) and np.all(boxes[:, 2:] > boxes[:, :2])
            assert set(canvas["labels"]) <= set(range(10)) and np.all(canvas["areas"] > 0)
    # No background photograph is shared between the splits.
    assert not set(offline.BACKGROUNDS["train"]) & set(offline.BACKGROUNDS["test"])


def test_offline_builder_writes_the_canvases_with_coco_features(data_dir):
    import tensorflow_datasets as tfds

    offline.ensure_prepared(data_dir, "tiny")
    builder = tfds.builder("mnist_detect_offline/tiny", data_dir=data_dir)
    assert {s: builder.info.splits[s].num_examples for s in ("train", "test")} == offline.TINY_SPLIT_SIZES
    features = builder.info.features
    assert set(features["objects"].feature) == {"id", "area", "bbox", "label", "is_crowd"}
    assert features["objects"]["label"].num_classes == 10
    for example in tfds.as_numpy(builder.as_dataset(split="test").take(3)):
        index = int(example["image/id"]) - 1 - offline.SPLIT_SIZES["train"]
        canvas = offline.make_canvas("test", index)
        np.testing.assert_array_equal(example["image"], canvas["image"])
        np.testing.assert_allclose(example["objects"]["bbox"], canvas["boxes"])
        np.testing.assert_array_equal(example["objects"]["label"], canvas["labels"])
        assert not example["objects"]["is_crowd"].any()


def test_offline_pipeline_batches_resume_and_cover_the_eval_split(data_dir):
    config = offline_config(data_dir)
    info = get_task(config).dataset_info()
    assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (10, 96, 48)
    batches = [b for b, _ in zip(detection_input.train_iterator(config, 0), range(4))]
    batch = batches[0]
    assert batch["image"].shape == (8, 64, 64, 3) and -1 <= batch["image"].min() <= batch["image"].max() <= 1
    assert batch["boxes"].shape == (8, 8, 4) and batch["labels"].shape == (8, 8)
    real = batch["box_mask"] > 0
    assert np.all(real[:, :-1] >= real[:, 1:])  # real boxes first, then padding
    assert np.all(batch["boxes"][~real] == 0) and np.all((batch["boxes"] >= 0) & (batch["boxes"] <= 1))
    assert np.all(batch["boxes"][real][:, 2:] >= batch["boxes"][real][:, :2])
    resumed = next(detection_input.train_iterator(config, 3))
    for key in batch:
        np.testing.assert_array_equal(resumed[key], batches[3][key])
    evals = list(detection_input.eval_iterator(config))
    ids = np.concatenate([b["image_id"][b["mask"] > 0] for b in evals])
    assert sorted(ids.tolist()) == list(range(4001, 4049))
    assert all(b["image_size"][0].tolist() == [128, 128] for b in evals)


def test_ssd_random_crop_keeps_boxes_inside_and_in_step_with_labels():
    import tensorflow as tf

    image = tf.zeros([100, 200, 3], tf.uint8)
    boxes = tf.constant([[0.1, 0.1, 0.3, 0.2], [0.5, 0.6, 0.9, 0.95], [0.0, 0.0, 1.0, 1.0]])
    labels = tf.constant([3, 4, 5])
    shapes = set()
    for seed in range(30):
        crop, out_boxes, out_labels = detection_input.ssd_random_crop(
            image, boxes, labels, tf.constant([seed, 1], tf.int64)
        )
        out_boxes = out_boxes.numpy()
        assert len(out_boxes) == len(out_labels.numpy()) >= 1  # the whole-image box always overlaps
        assert np.all((out_boxes >= 0) & (out_boxes <= 1))
        shapes.add(tuple(crop.shape))
    assert len(shapes) > 3  # crops of several sizes, and the whole image now and then
    assert (100, 200, 3) in shapes


# --------------------------------------------------------------------------------------- coco/2017
def _mock_coco(num_examples: int):
    """`tfds.testing.mock_data` for coco/2017 with consistent random examples: TFDS' own random
    examples give the fields of `objects` different lengths. JPEG images of random sizes, boxes
    with ymin < ymax, some crowds."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        offset = 0 if "train" in str(split) else 1000

        def examples():
            for i in range(num_examples):
                rng = np.random.default_rng(offset + i)
                h, w, n = int(rng.integers(40, 90)), int(rng.integers(40, 90)), int(rng.integers(1, 6))
                corner = rng.uniform(0, 0.5, (n, 2))
                size = rng.uniform(0.2, 0.5, (n, 2))
                image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                yield {
                    "image": tf.io.encode_jpeg(image).numpy(),
                    "image/filename": f"{offset + i}.jpg",
                    "image/id": offset + i + 1,
                    "objects": {
                        "id": np.arange(n, dtype=np.int64),
                        "area": rng.integers(10, 2000, n),
                        "bbox": np.concatenate([corner, corner + size], 1).astype(np.float32),
                        "label": rng.integers(0, 80, n),
                        "is_crowd": np.arange(n) == 1,  # the second box of each image is a crowd
                    },
                }

        signature = {
            "image": tf.TensorSpec([], tf.string),
            "image/filename": tf.TensorSpec([], tf.string),
            "image/id": tf.TensorSpec([], tf.int64),
            "objects": {
                "id": tf.TensorSpec([None], tf.int64),
                "area": tf.TensorSpec([None], tf.int64),
                "bbox": tf.TensorSpec([None, 4], tf.float32),
                "label": tf.TensorSpec([None], tf.int64),
                "is_crowd": tf.TensorSpec([None], tf.bool),
            },
        }
        return tf.data.Dataset.from_generator(examples, output_signature=signature)

    return tfds.testing.mock_data(num_examples=num_examples, as_dataset_fn=as_dataset)


def coco_overrides(data_dir: str) -> dict:
    return {
        "data_dir": data_dir,
        "width": 0.35,
        "max_repeats": 1,
        "resolution": 64,
        "batch_size": 8,
        "eval_batch_size": 8,
        "num_train_examples": 16,
        "num_eval_examples": 12,
        "shuffle_buffer": 16,
        "cache": False,
        "detection.max_boxes": 6,
        "log_every_steps": 1,
        "eval_every_steps": 2,
        "checkpoint_every_steps": 2,
    }


def test_coco_pipeline_drops_crowds_in_training_and_keeps_them_for_eval(tmp_path):
    config = config_lib.apply_overrides(
        config_lib.load_config(COCO_CONFIG),
        {**coco_overrides(str(tmp_path)), "detection.random_crop": False, "augment.flip": False},
    )
    with _mock_coco(16):
        assert get_task(config).dataset_info().num_classes == 80
        train = [next(it) for it in [detection_input.train_iterator(config, 0)] for _ in range(2)]
        evals = list(detection_input.eval_iterator(config))
    # Every image has a crowd as its second box (when it has two or more): training never sees it.
    counts = sorted(int(c) for b in train for c in b["box_mask"].sum(1))
    expected = []
    for i in range(16):  # the mock's draws: height, width, then the number of boxes
        rng = np.random.default_rng(i)
        rng.integers(40, 90), rng.integers(40, 90)
        n = int(rng.integers(1, 6))
        expected.append(n - (n > 1))
    assert counts == sorted(expected)
    crowds = np.concatenate([b["is_crowd"][b["mask"] > 0] for b in evals])
    assert crowds[:, 1].sum() > 0 and sorted(
        np.concatenate([b["image_id"][b["mask"] > 0] for b in evals])
    ) == list(range(1001, 1017))


# ------------------------------------------------------------------------------------------ metric
def _ground_truth():
    images = [{"id": 1, "height": 100, "width": 200}, {"id": 2, "height": 50, "width": 50}]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 0, "bbox": [10, 10, 50, 40], "area": 2000, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [100, 50, 60, 40], "area": 2400, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0},
    ]
    return images, annotations


def test_coco_ap_is_one_for_the_ground_truth_and_zero_for_wrong_classes():
    images, annotations = _ground_truth()
    perfect = [{**{k: a[k] for k in ("image_id", "category_id", "bbox")}, "score": 0.9} for a in annotations]
    assert coco_ap(images, annotations, perfect, 5)[:3] == pytest.approx([1.0, 1.0, 1.0])
    wrong = [{**d, "category_id": 1} for d in perfect]
    assert coco_ap(images, annotations, wrong, 5)[:3] == [0.0, 0.0, 0.0]
    # A box half as wide: IoU 0.5 -> counts at AP50, not at AP75.
    half = [dict(perfect[2], bbox=[5, 5, 10, 20])] + perfect[:2]
    ap, ap50, ap75 = coco_ap(images, annotations, half, 5)[:3]
    assert ap50 == pytest.approx(1.0) and ap75 < 0.9 and ap < 0.9


def test_evaluator_turns_batches_into_coco_records():
    from mnv2_jax.tasks.detection.evaluator import CocoEvaluator

    boxes = np.array([[[0.1, 0.05, 0.5, 0.3], [0, 0, 0, 0]]], np.float32)  # normalised, padded
    out = {
        "mask": np.array([1.0]),
        "image_id": np.array([7]),
        "image_size": np.array([[100, 200]]),
        "boxes": boxes,
        "labels": np.array([[2, 0]]),
        "box_mask": np.array([[1.0, 0.0]]),
        "area": np.array([[3000.0, 0.0]]),
        "is_crowd": np.array([[0, 0]]),
        "detection_boxes": boxes,
        "detection_scores": np.array([[0.8, 0.0]]),
        "detection_classes": np.array([[2, 0]]),
        "num_detections": np.array([1]),
        "loss": np.float32(1.5),
    }
    evaluator = CocoEvaluator(3)
    evaluator.add(out)
    assert evaluator.annotations[0]["bbox"] == pytest.approx([10.0, 10.0, 50.0, 40.0])
    result = evaluator.result()
    assert result["AP"] == pytest.approx(1.0) and result["loss"] == 1.5 and result["examples"] == 1


# ------------------------------------------------------------------------- optimizer and errors
def test_head_depthwise_kernels_get_weight_decay_and_the_backbone_keeps_its_rule():
    task = get_task(offline_config(None))
    params = {
        "block_3": {"depthwise": {"conv": {"kernel": 0}}, "expand": {"conv": {"kernel": 0}}},
        "extra_2": {"depthwise": {"conv": {"kernel": 0}, "bn": {"scale": 0}}},
        "box_predictor_0": {"depthwise": {"conv": {"kernel": 0}}, "conv": {"kernel": 0, "bias": 0}},
    }
    mask = optim.weight_decay_mask(params, rule=task.weight_decay_rule)
    assert mask["block_3"] == {"depthwise": {"conv": {"kernel": False}}, "expand": {"conv": {"kernel": True}}}
    assert mask["extra_2"]["depthwise"] == {"conv": {"kernel": True}, "bn": {"scale": False}}
    assert mask["box_predictor_0"] == {
        "depthwise": {"conv": {"kernel": True}},
        "conv": {"kernel": True, "bias": False},
    }


def test_tf_od_recipe_decays_every_800720_steps():
    config = config_lib.load_config(COCO_CONFIG)
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=4928)
    assert config.batch_size == 24 and config.resolution == 320
    np.testing.assert_allclose(schedule(0), 0.004, rtol=1e-6)
    np.testing.assert_allclose(schedule(800_719), 0.004, rtol=1e-6)
    np.testing.assert_allclose(schedule(800_720), 0.004 * 0.95, rtol=1e-6)


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (
            {"task": "keypoints"},
            r"'task': must be one of \('classification', 'detection', 'segmentation'\)",
        ),
        ({"resolution": 32}, r"resolution: detection needs an integer >= 33"),
        ({"num_classes": 80}, r"'num_classes': 'mnist_detect_offline/tiny' has 10 classes"),
        ({"dataset": "mnist_offline"}, r"'dataset': 'mnist_offline' has no boxes"),
        ({"detection.head": "yolo"}, r"'detection.head': must be one of \('ssdlite', 'ssd'\)"),
    ],
)
def test_bad_input_names_the_key(data_dir, tmp_path, capsys, overrides, pattern):
    args = ["train", "--config", OFFLINE_CONFIG, "--workdir", str(tmp_path / "run")]
    values = {
        "data_dir": data_dir,
        "dataset": "mnist_detect_offline/tiny",
        "eval_batch_size": 16,
        **overrides,
    }
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args + [f"--config.{k}={v}" for k, v in values.items()])
    assert exit_info.value.code == 2
    assert re.search(pattern, capsys.readouterr().err)
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------------------- mnv2 train, tf_od
def test_mnv2_train_runs_the_tf_od_preset_on_coco(tmp_path):
    """The paper's preset as the config file has it, shrunk (width, resolution, batch, steps) so that
    it compiles in a test; resuming, SIGTERM and NaN stops are the loop's and tested there."""
    workdir = str(tmp_path / "run")
    overrides = {**coco_overrides(str(tmp_path / "tfds")), "total_steps": 2}
    with _mock_coco(16):
        cli.main(
            ["train", "--config", COCO_CONFIG, "--workdir", workdir]
            + [f"--config.{k}={v}" for k, v in overrides.items()]
        )
    stored = json.load(open(os.path.join(workdir, "config.json")))
    assert stored["task"] == "detection" and stored["recipe"] == "tf_od" and stored["num_classes"] == 80
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["step"] == 2 and summary["task"] == "detection"
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "loss"):
        assert np.isfinite(summary[f"eval/{key}"])
    assert "eval_ema/AP" not in summary  # the TF config keeps no moving average
    lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [line for line in lines if "train/loss" in line]
    assert [line["step"] for line in train] == [1, 2]
    assert all(np.isfinite(line["train/cls_loss"]) and line["train/positives"] > 0 for line in train)
    assert train[0]["lr"] == pytest.approx(0.004 * 8 / 24)  # lr 0.004 at batch 24, scaled to 8
    config = config_lib.apply_overrides(config_lib.load_config(COCO_CONFIG), overrides)
    assert summary["params"] == get_task(config).count(80)["params"]


# ------------------------------------------------------------------------------------------ export
def _random_detector(config, seed: int = 0):
    """The config's detector with random weights spread like trained ones (batch norm not the
    identity, biases away from zero), built from the variables' shapes alone (no init to run)."""
    import functools

    import jax

    module = get_task(config).model(10)
    x = jax.ShapeDtypeStruct((1, config.resolution, config.resolution, 3), np.float32)
    shapes = jax.eval_shape(functools.partial(module.init, train=False), jax.random.PRNGKey(0), x)
    rng = np.random.default_rng(seed)

    def randomize(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        if name in ("bias", "mean"):
            return rng.normal(0.0, 0.5, leaf.shape).astype(np.float32)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)

    return module, jax.tree_util.tree_map_with_path(randomize, shapes)


def test_mnv2_export_writes_tflite_with_the_postprocessing_op_matching_jax(data_dir, tmp_path, capsys):
    """`mnv2 export` of a detection weights folder: one TFLite model whose detections (TFLite's
    `TFLite_Detection_PostProcess` op) equal the JAX post-processing's, checked on export on the
    tiny split's images and here again on other images."""
    import jax

    from mnv2_jax import workdir as workdir_lib
    from mnv2_jax.tasks.detection import postprocess
    from mnv2_jax.tools.interop import detection_export, tflite
    from mnv2_jax.train import checkpoint

    config = offline_config(data_dir, num_classes=10)
    module, variables = _random_detector(config)
    workdir = str(tmp_path / "weights")
    os.makedirs(workdir)
    checkpoint.save_variables(workdir, variables)
    workdir_lib.write_config(workdir, json.loads(config.to_json()))
    capsys.readouterr()
    cli.main(["export", "--workdir", workdir, "--out", str(tmp_path / "export"), "--json"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # after TFDS' own lines
    assert report["output"] == "detections" and report["num_classes"] == 10
    assert not report["check_images_synthetic"] and report["check_images"] == detection_export.CHECK_IMAGES
    check = report["tflite_check"]
    assert check["passed"] and check["missing_in_tflite"] == check["missing_in_jax"] == 0
    assert check["compared_detections"] >= report["check_images"]  # something was compared
    assert check["max_box_error"] <= 1e-4 and check["max_score_error"] <= 1e-4
    assert report["postprocess"]["use_regular_nms"] and report["postprocess"]["max_detections"] == 100
    assert report["saved_model_max_rel_error"] < 1e-3
    assert json.load(open(tmp_path / "export" / "export.json"))["tflite_check"] == check

    interp = tflite.interpreter(model_path=report["tflite"])
    ops = {op["op_name"] for op in interp._get_ops_details()}
    assert "TFLite_Detection_PostProcess" in ops and {"CONV_2D", "DEPTHWISE_CONV_2D"} <= ops
    (inp,) = interp.get_input_details()
    assert list(inp["shape"]) == [1, 64, 64, 3]
    # Fresh images, outside the export's own check: the top detections, row by row.
    images = np.random.default_rng(5).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    found = detection_export.run_tflite(report["tflite"], images)
    assert found["detection_boxes"].shape == (2, 100, 4) and found["detection_scores"].shape == (2, 100)
    assert found["detection_classes"].shape == (2, 100) and found["num_detections"].shape == (2,)
    plain = module.clone(depthwise_impl="lax", pointwise_impl="lax")
    outputs = jax.jit(lambda x: plain.apply(variables, x, train=False))(images)
    anchors = get_task(config).anchors()
    expected = postprocess.detect(outputs["box_encodings"], outputs["class_logits"], anchors)
    np.testing.assert_array_equal(found["num_detections"], expected["num_detections"])
    top = 10
    np.testing.assert_array_equal(found["detection_classes"][:, :top], expected["classes"][:, :top])
    np.testing.assert_allclose(found["detection_scores"][:, :top], expected["scores"][:, :top], atol=1e-5)
    np.testing.assert_allclose(found["detection_boxes"][:, :top], expected["boxes"][:, :top], atol=1e-4)
    # Clipped to the image (up to the float error of re-encoding the clipped boxes).
    assert np.all((found["detection_boxes"] >= -1e-5) & (found["detection_boxes"] <= 1 + 1e-5))


def test_export_check_flags_moved_boxes_other_classes_and_missing_detections():
    from mnv2_jax.tools.interop import detection_export

    boxes = np.zeros((1, 5, 4), np.float32)
    boxes[0, :3] = [[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.9, 0.6], [0.0, 0.0, 1.0, 1.0]]
    reference = {
        "detection_boxes": boxes,
        "detection_classes": np.array([[3, 1, 3, 0, 0]], np.int32),
        "detection_scores": np.array([[0.9, 0.5, 0.0005, 0.0, 0.0]], np.float32),
        "num_detections": np.array([3], np.int32),
    }
    same = detection_export.compare_detections({k: v.copy() for k, v in reference.items()}, reference)
    # The third detection scores below the check's threshold: two compared.
    assert same["passed"] and same["compared_detections"] == 2 and same["max_box_error"] == 0.0
    moved = {k: v.copy() for k, v in reference.items()}
    moved["detection_boxes"][0, 1, 2] += 1e-3
    result = detection_export.compare_detections(moved, reference)
    assert not result["passed"] and result["missing_in_tflite"] == result["missing_in_jax"] == 1
    relabelled = {k: v.copy() for k, v in reference.items()}
    relabelled["detection_classes"][0, 0] = 2
    assert not detection_export.compare_detections(relabelled, reference)["passed"]
    rescored = {k: v.copy() for k, v in reference.items()}
    rescored["detection_scores"][0, 0] += 1e-3
    result = detection_export.compare_detections(rescored, reference)
    assert not result["passed"] and result["max_score_error"] == pytest.approx(1e-3, rel=1e-3)
    fewer = {k: v.copy() for k, v in reference.items()}
    fewer["num_detections"][0] = 1
    result = detection_export.compare_detections(fewer, reference)
    assert not result["passed"] and result["missing_in_tflite"] == 1 and result["num_detections_equal"] == 0
