"""The segmentation task: Mobile DeepLabv3's head, its accounting, the offline and VOC datasets, the input
pipeline, the loss and mIOU, the `deeplab` schedule and a short run of the loop.

Set MNV2_TEST_DATA_DIR (or TFDS_DATA_DIR) to reuse a prepared TFDS data dir between runs.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tarfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mnv2_jax import accounting, cli, spec
from mnv2_jax import config as config_lib
from mnv2_jax.tasks import get_task
from mnv2_jax.tasks.segmentation import head as head_lib
from mnv2_jax.tasks.segmentation import loss as loss_lib
from mnv2_jax.tasks.segmentation.evaluator import SegmentationEvaluator, iou_from_confusion

TINY_DATASET = "mnist_seg_offline/tiny"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    path = os.environ.get("MNV2_TEST_DATA_DIR") or os.environ.get("TFDS_DATA_DIR")
    return path or str(tmp_path_factory.mktemp("tfds"))


def seg_config(data_dir: str, **overrides) -> ml_collections.ConfigDict:
    """A tiny segmentation run on `mnist_seg_offline/tiny` (width 0.35, one block per row, 64 px)."""
    values = {
        "task": "segmentation",
        "dataset": TINY_DATASET,
        "data_dir": data_dir,
        "train_split": "train",
        "eval_split": "test",
        "width": 0.35,
        "max_repeats": 1,
        "output_stride": 16,
        "resolution": 128,
        "segmentation.crop_size": 64,
        "segmentation.depth": 32,
        "recipe": "deeplab",
        "batch_size": 8,
        "eval_batch_size": 24,  # 64 = 2 * 24 + 16: the last eval batch is padded
        "total_epochs": None,
        "total_steps": 4,
        "log_every_steps": 2,
        "eval_every_steps": 4,
        "checkpoint_every_steps": 4,
        "progress": False,
    }
    values.update(overrides)
    config = config_lib.apply_overrides(config_lib.base_config(), values)
    config_lib.validate_config(config)
    return config


# ------------------------------------------------------------------------------------------------
# The head.


@pytest.mark.parametrize(
    "shape, size", [((2, 5, 7, 3), (17, 13)), ((1, 33, 33, 2), (513, 513)), ((1, 1, 4, 1), (6, 9))]
)
def test_upsampling_matches_tensorflow_align_corners(shape, size):
    import tensorflow as tf

    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected = tf.compat.v1.image.resize_bilinear(x, size, align_corners=True).numpy()
    got = np.asarray(head_lib.resize_bilinear_align_corners(jnp.asarray(x), size))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The corners land on the corners (what align_corners means).
    np.testing.assert_allclose(got[:, [0, -1]][:, :, [0, -1]], x[:, [0, -1]][:, :, [0, -1]], atol=1e-6)


def test_aspp_rates_follow_the_output_stride():
    assert head_lib.aspp_rates(16) == (6, 12, 18)
    assert head_lib.aspp_rates(8) == (12, 24, 36)


def _variables_shapes(model, resolution):
    return jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, resolution, resolution, 3)), train=False)
    )


def _sizes(params) -> tuple[int, int]:
    """(conv/dense weights and biases, batch-norm scale and offset) of a params tree."""
    weights = bn = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [getattr(k, "key", "") for k in path]
        if "bn" in names:
            bn += leaf.size
        else:
            weights += leaf.size
    return weights, bn


@pytest.mark.parametrize(
    "width, resolution, output_stride, aspp, separable",
    [(1.0, 513, 16, False, False), (1.0, 513, 16, True, False), (0.5, 321, 8, True, True)],
)
def test_accounting_equals_the_flax_variables(width, resolution, output_stride, aspp, separable):
    arch = spec.build_architecture(width=width, output_stride=output_stride, num_classes=0)
    model = head_lib.MobileDeepLabV3(arch, 21, aspp=aspp, aspp_separable=separable)
    variables = _variables_shapes(model, resolution)
    counts = accounting.count_deeplab(arch, resolution, 21, aspp, separable)
    assert _sizes(variables["params"]) == (counts.params, counts.params_bn)
    # No 1280-channel conv and no classifier: the backbone stops at its last block.
    assert "head" not in variables["params"] and "classifier" not in variables["params"]
    assert "block_16" in variables["params"]
    # The logits come back at the input size.
    logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, resolution, resolution, 3))), variables)
    assert logits.shape == (2, resolution, resolution, 21)


def test_backbone_stops_at_its_final_endpoint():
    from mnv2_jax.models.mobilenet_v2 import MobileNetV2

    arch = spec.build_architecture(width=0.35, output_stride=16, num_classes=0, max_repeats=1)
    model = MobileNetV2(arch, final_endpoint="block_3")
    variables = _variables_shapes(model, 64)
    assert sorted(variables["params"]) == ["block_0", "block_1", "block_2", "block_3", "stem"]
    out, taps = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((1, 64, 64, 3)), taps=("block_2",)), variables
    )
    assert out.shape == (1, 4, 4, spec.tap_channels(arch)["block_3"]) and taps["block_2"].shape[1] == 8
    with pytest.raises(ValueError, match="taps: unknown feature"):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 64, 64, 3)), taps=("head",)), variables)
    with pytest.raises(ValueError, match="final_endpoint: must be None or one of"):
        _variables_shapes(MobileNetV2(arch, final_endpoint="block_99"), 64)


def test_table_7_numbers():
    """The paper's Table 7 rows (HEADS.md 10.10), from the spec."""
    arch = spec.build_architecture(width=1.0, output_stride=16, num_classes=0)
    plain = accounting.count_deeplab(arch, 513, 21)
    assert (plain.params, plain.params_bn, plain.madds) == (2_080_469, 33_088, 2_740_709_056)
    assert round((plain.params + plain.params_bn) / 1e6, 2) == 2.11
    with_aspp = accounting.count_deeplab(arch, 513, 21, aspp=True)
    assert with_aspp.params + with_aspp.params_bn == 4_523_541
    assert with_aspp.madds == 5_363_508_928
    head_only = [layer for layer in plain.layers if not layer.name.startswith(("stem", "block_"))]
    assert sum(layer.params for layer in head_only) == 300_309
    assert sum(layer.madds for layer in head_only) == 237_884_672


def test_mnv2_info_segmentation_json(capsys):
    args = [
        "info",
        "--task",
        "segmentation",
        "--width",
        "1.0",
        "--resolution",
        "513",
        "--output-stride",
        "16",
    ]
    cli.main([*args, "--json"])
    plain = json.loads(capsys.readouterr().out)
    assert plain["params_total"] == 2_113_557 and plain["madds"] == 2_740_709_056
    assert plain["num_classes"] == 21 and plain["task"] == "segmentation"
    cli.main([*args, "--aspp", "--json"])
    assert json.loads(capsys.readouterr().out)["params_total"] == 4_523_541
    cli.main(args)
    table = capsys.readouterr().out
    assert "concat_projection" in table and "2,113,557" in table


def test_mnv2_info_reads_a_segmentation_config(capsys):
    """A segmentation config file picks the task and its head settings (`segmentation.aspp`) with no
    `--task` flag: the same counts as the flags that say it."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    voc = os.path.join(repo, "configs", "segmentation", "voc.py")
    cli.main(["info", "--config", f"{voc}:aspp=true", "--json"])
    from_config = json.loads(capsys.readouterr().out)
    flags = ["--task", "segmentation", "--resolution", "513", "--output-stride", "16", "--aspp", "--json"]
    cli.main(["info", *flags])
    assert from_config == json.loads(capsys.readouterr().out)
    assert from_config["task"] == "segmentation" and from_config["aspp"] is True


def test_head_layers_are_wired_as_deeplab(monkeypatch):
    """Image pooling works on one value per image and channel; the ASPP convs dilate at the rates
    of the output stride (traced only, nothing compiles)."""
    from mnv2_jax.models import mobilenet_v2

    arch = spec.build_architecture(width=0.35, output_stride=8, num_classes=0, max_repeats=1)
    model = head_lib.MobileDeepLabV3(arch, 5, aspp=True, depth=16)
    x = jnp.zeros((2, 64, 64, 3))
    variables = _variables_shapes(model, 64)
    seen = []
    original = mobilenet_v2.layers.full_conv

    def spy(x, kernel, stride=1, dilation=1, impl="auto"):
        seen.append((kernel.shape[0], dilation))
        return original(x, kernel, stride, dilation, impl)

    monkeypatch.setattr(mobilenet_v2.layers, "full_conv", spy)
    _, state = jax.eval_shape(
        lambda v: model.apply(v, x, train=False, capture_intermediates=True, mutable=["intermediates"]),
        variables,
    )
    assert [d for k, d in seen if k == 3 and d > 1] == [12, 24, 36]
    assert state["intermediates"]["image_pooling"]["__call__"][0].shape == (2, 1, 1, 16)
    assert state["intermediates"]["aspp0"]["__call__"][0].shape == (2, 8, 8, 16)


# ------------------------------------------------------------------------------------------------
# Loss and mIOU.


def test_loss_ignores_255_and_averages_over_labelled_pixels():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4, 5)), jnp.float32)
    labels = np.random.default_rng(1).integers(0, 5, (2, 3, 4))
    labels[0, 0, :] = 255
    loss, metrics = loss_lib.train_loss(logits, jnp.asarray(labels))
    log_p = np.asarray(jax.nn.log_softmax(logits))
    valid = labels != 255
    picked = np.take_along_axis(log_p, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    assert float(loss) == pytest.approx(-picked[valid].mean(), rel=1e-5)
    predicted = log_p.argmax(-1)
    assert float(metrics["pixel_acc"]) == pytest.approx((predicted == labels)[valid].mean())
    # A logit change on an ignored pixel changes nothing.
    changed = logits.at[0, 0, 0].add(100.0)
    assert float(loss_lib.train_loss(changed, jnp.asarray(labels))[0]) == pytest.approx(float(loss))


def test_confusion_matrix_and_iou_by_hand():
    labels = jnp.asarray([[[0, 0, 1, 1], [2, 2, 255, 1]]])
    predictions = jnp.asarray([[[0, 1, 1, 1], [2, 0, 2, 1]]])
    cm = np.asarray(loss_lib.confusion_matrix(labels, predictions, 3, jnp.ones(labels.shape)))
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 3, 0], [1, 0, 1]])
    # IOU_c = TP / (TP + FP + FN): 1/3, 3/4, 1/2.
    np.testing.assert_allclose(iou_from_confusion(cm), [1 / 3, 3 / 4, 1 / 2])
    # Padding examples (weight 0) count nothing.
    assert int(loss_lib.confusion_matrix(labels, predictions, 3, jnp.zeros(labels.shape)).sum()) == 0


def test_miou_is_split_wide_and_skips_absent_classes():
    """One confusion matrix over the split, not a mean of per-batch mIOUs; a class in neither the
    labels nor the predictions is left out of the mean."""
    evaluator = SegmentationEvaluator(4, ["bg", "a", "b", "c"])
    first = np.zeros((4, 4), np.int64)
    first[0, 0], first[1, 1], first[1, 0] = 10, 1, 3  # a: IOU 1/4 in this batch
    second = np.zeros((4, 4), np.int64)
    second[0, 0], second[1, 1], second[2, 2] = 10, 3, 5  # a: 3/3 here
    for cm in (first, second):
        evaluator.add({"confusion": cm, "loss": 1.0, "pixels": 2.0})
    result = evaluator.result()
    iou_bg, iou_a, iou_b = 20 / 23, 4 / 7, 1.0
    assert result["iou/a"] == pytest.approx(iou_a) and result["iou/bg"] == pytest.approx(iou_bg)
    assert "iou/c" not in result
    assert result["miou"] == pytest.approx((iou_bg + iou_a + iou_b) / 3)
    assert result["loss"] == pytest.approx(0.5)
    perfect = SegmentationEvaluator(2)
    perfect.add({"confusion": np.diag([5, 7]), "loss": 0.0, "pixels": 12.0})
    assert perfect.result()["miou"] == 1.0


# ------------------------------------------------------------------------------------------------
# Data: the offline dataset, the input pipeline, PASCAL VOC + SBD.


def test_offline_canvases_follow_voc_semantics(data_dir):
    from mnv2_jax.data.datasets import mnist_seg_offline as seg_data

    first = seg_data.make_example("train", 3)
    again = seg_data.make_example("train", 3)
    np.testing.assert_array_equal(first["image"], again["image"])  # a function of (split, index)
    np.testing.assert_array_equal(first["segmentation_mask"], again["segmentation_mask"])
    masks = np.stack(
        [
            seg_data.make_example(split, i)["segmentation_mask"]
            for split in ("train", "test")
            for i in range(8)
        ]
    )
    values = set(np.unique(masks).tolist())
    assert values <= set(range(11)) | {255} and 255 in values and len(values - {0, 255}) >= 2
    # Every labelled digit pixel has the ignore rim somewhere next to its digit.
    assert (masks == 255).sum() > 0 and ((masks >= 1) & (masks <= 10)).sum() > 0

    task = get_task(seg_config(data_dir))
    info = task.dataset_info()
    assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (11, 256, 64)
    import tensorflow_datasets as tfds

    builder = tfds.builder(TINY_DATASET, data_dir=data_dir)
    stored = next(iter(tfds.as_numpy(builder.as_dataset(split="test[:1]"))))
    index = int(stored["image/filename"].decode().split("_")[1])
    expected = seg_data.make_example("test", index)
    np.testing.assert_array_equal(stored["segmentation_mask"], expected["segmentation_mask"])
    assert np.abs(stored["image"].astype(int) - expected["image"]).mean() < 4  # JPEG
    assert builder.info.metadata["class_names"][:2] == ["background", "digit_0"]


def test_offline_digits_are_dilated_before_resizing(monkeypatch):
    """The bold digits: the same canvases drawn from undilated MNIST ink label fewer digit pixels."""
    from mnv2_jax.data.datasets import mnist_seg_offline as seg_data

    def digit_pixels() -> int:
        masks = [seg_data.make_example("test", i)["segmentation_mask"] for i in range(6)]
        return int(sum(((m >= 1) & (m <= 10)).sum() for m in masks))

    bold = digit_pixels()
    monkeypatch.setattr(seg_data, "INK_DILATION", 1)
    assert digit_pixels() < 0.8 * bold


def _run_tf(fn, *args):
    return [np.asarray(t) for t in fn(*args)]


def test_random_scale_pad_crop_and_flip():
    import tensorflow as tf

    from mnv2_jax.tasks.segmentation import input as input_lib

    image = tf.constant(np.random.default_rng(0).integers(0, 256, (40, 40, 3)), tf.uint8)
    label = tf.constant(np.random.default_rng(1).integers(0, 5, (40, 40, 1)), tf.uint8)
    key = tf.constant([1, 2], tf.int64)
    half = input_lib.SegmentationInputConfig(crop_size=32, min_scale=0.5, max_scale=0.5, flip=False)
    out_image, out_label = _run_tf(input_lib.preprocess_train, image, label, key, 32, half)
    assert out_image.shape == (32, 32, 3) and out_label.shape == (32, 32)
    # Scaled to 20 x 20, padded bottom/right: labels 255 and images 0 (the mean pixel) there.
    assert (out_label[20:] == 255).all() and (out_label[:, 20:] == 255).all()
    assert (out_image[20:] == 0).all() and (out_label[:20, :20] < 5).all()
    # Twice the size: no padding, nearest-neighbour labels keep their values; same key, same crop.
    double = input_lib.SegmentationInputConfig(crop_size=32, min_scale=2.0, max_scale=2.0, flip=True)
    a = _run_tf(input_lib.preprocess_train, image, label, key, 32, double)
    b = _run_tf(input_lib.preprocess_train, image, label, key, 32, double)
    np.testing.assert_array_equal(a[1], b[1])
    assert set(np.unique(a[1]).tolist()) <= set(range(5)) and -1 <= a[0].min() and a[0].max() <= 1
    # Scales come from {0.5, 0.75, ..., 2.0}.
    steps = input_lib.SegmentationInputConfig(crop_size=32)
    sizes = set()
    for seed in range(40):
        scaled, _ = input_lib.random_scale(
            tf.zeros((40, 40, 3)), label, tf.constant([seed, 0], tf.int64), steps
        )
        sizes.add(int(scaled.shape[0]))
    assert sizes <= {20, 30, 40, 50, 60, 70, 80} and len(sizes) >= 4


def test_train_and_eval_batches(data_dir):
    task = get_task(seg_config(data_dir))
    batches = task.train_iterator(0)
    first = [next(batches) for _ in range(3)]
    assert first[0]["image"].shape == (8, 64, 64, 3) and first[0]["label"].shape == (8, 64, 64)
    assert first[0]["label"].dtype == np.int32
    resumed = next(task.train_iterator(2))  # resuming at step 2 reads the batch an unbroken run reads
    np.testing.assert_array_equal(resumed["label"], first[2]["label"])
    np.testing.assert_array_equal(resumed["image"], first[2]["image"])
    evals = list(task.eval_iterator())
    assert [b["image"].shape for b in evals] == [(24, 128, 128, 3)] * 3
    assert float(sum(b["mask"].sum() for b in evals)) == 64


def test_bad_inputs_name_the_key(data_dir):
    with pytest.raises(ValueError, match="'output_stride'"):
        get_task(seg_config(data_dir, output_stride=None))
    with pytest.raises(ValueError, match="output_stride"):
        seg_config(data_dir, output_stride=4)
    with pytest.raises(ValueError, match="'dataset'.*'mnist_offline' has no 'segmentation_mask'"):
        get_task(seg_config(data_dir, dataset="mnist_offline")).dataset_info()
    # Labels 5..10 do not fit 5 classes: the iterator stops, naming num_classes.
    with pytest.raises(ValueError, match="outside 0..4 .*'num_classes'"):
        next(get_task(seg_config(data_dir, num_classes=5)).train_iterator(0))
    with pytest.raises(ValueError, match="'resolution'"):
        next(get_task(seg_config(data_dir, resolution=96)).eval_iterator())
    with pytest.raises(ValueError, match="'optim.lr_schedule'"):
        from mnv2_jax.train import optim

        optim.resolve_optim(seg_config(data_dir, **{"optim.lr_schedule": "linear"}))


def _write_voc_archives(manual: str, voc_ids: dict[str, list[str]], sbd_ids: dict[str, list[str]]) -> dict:
    """Tiny stand-ins for VOCtrainval_11-May-2012.tar and benchmark.tgz (the real layouts);
    returns every id's label array."""
    import scipy.io
    from PIL import Image

    rng = np.random.default_rng(0)
    labels = {}

    def add(tar, name, data: bytes):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    def jpeg(shape) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        return buffer.getvalue()

    segmented = sorted({i for ids in voc_ids.values() for i in ids})
    everything = sorted(set(segmented) | {i for ids in sbd_ids.values() for i in ids})
    os.makedirs(manual, exist_ok=True)
    with tarfile.open(os.path.join(manual, "VOCtrainval_11-May-2012.tar"), "w") as tar:
        root = "VOCdevkit/VOC2012"
        for name, ids in voc_ids.items():
            add(tar, f"{root}/ImageSets/Segmentation/{name}.txt", "".join(f"{i}\n" for i in ids).encode())
        for image_id in everything:
            add(tar, f"{root}/JPEGImages/{image_id}.jpg", jpeg((12, 10)))
        for image_id in segmented:
            label = rng.integers(0, 21, (12, 10)).astype(np.uint8)
            label[0] = 255
            png = Image.fromarray(label, mode="P")
            png.putpalette(list(rng.integers(0, 256, 768)))
            buffer = io.BytesIO()
            png.save(buffer, format="PNG")
            add(tar, f"{root}/SegmentationClass/{image_id}.png", buffer.getvalue())
            labels[image_id] = label
    with tarfile.open(os.path.join(manual, "benchmark.tgz"), "w:gz") as tar:
        root = "benchmark_RELEASE/dataset"
        for name, ids in sbd_ids.items():
            add(tar, f"{root}/{name}.txt", "".join(f"{i}\n" for i in ids).encode())
        for image_id in sorted({i for ids in sbd_ids.values() for i in ids}):
            label = rng.integers(0, 21, (12, 10)).astype(np.uint8)
            buffer = io.BytesIO()
            scipy.io.savemat(
                buffer, {"GTcls": {"Segmentation": label, "CategoriesPresent": np.unique(label)}}
            )
            add(tar, f"{root}/cls/{image_id}.mat", buffer.getvalue())
            labels.setdefault(image_id, label)  # VOC's own label wins where both exist
    return labels


def test_voc_sbd_builder_on_a_fake_archive(tmp_path):
    import tensorflow_datasets as tfds

    from mnv2_jax.data.datasets import voc2012_seg_aug as voc

    voc_ids = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033", "2008_000001"]}
    sbd_ids = {"train": ["2008_000002", "2007_000033"], "val": ["2008_000003", "2007_000039"]}
    labels = _write_voc_archives(str(tmp_path / "manual"), voc_ids, sbd_ids)
    builder = voc.Voc2012SegAug(data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(tmp_path / "manual"), compute_stats=tfds.download.ComputeStatsMode.SKIP
        )
    )
    # train_aug = (SBD train + SBD val + VOC train) - VOC val; val = VOC val.
    expected = {
        "train_aug": {"2007_000032", "2007_000039", "2008_000002", "2008_000003"},
        "val": {"2007_000033", "2008_000001"},
    }
    for split, ids in expected.items():
        examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
        assert {e["image/filename"].decode()[:-4] for e in examples} == ids
        for e in examples:
            np.testing.assert_array_equal(
                e["segmentation_mask"][..., 0], labels[e["image/filename"].decode()[:-4]]
            )
            assert e["image"].shape == (12, 10, 3)
    assert builder.info.metadata["num_classes"] == 21 and builder.info.metadata["ignore_label"] == 255
    assert voc.SPLIT_SIZES == {"train_aug": 10_582, "val": 1_449}


# ------------------------------------------------------------------------------------------------
# The deeplab recipe and the loop.


def test_poly_schedule_and_momentum_sgd():
    from mnv2_jax.train import optim

    config = ml_collections.ConfigDict(
        {
            "recipe": "deeplab",
            "batch_size": 16,
            "total_steps": 100,
            "optim": dict.fromkeys(optim.RECIPES["deeplab"]),
        }
    )
    schedule = optim.learning_rate_schedule(config, steps_per_epoch=10)
    assert float(schedule(0)) == pytest.approx(0.007)
    assert float(schedule(50)) == pytest.approx(0.007 * 0.5**0.9)
    assert float(schedule(100)) == 0.0 and float(schedule(150)) == 0.0
    # TF's MomentumOptimizer: accum = 0.9 * accum + (g + wd * w); w -= lr_t * accum.
    tx = optim.create_optimizer(config, steps_per_epoch=10)
    params = {"conv": {"kernel": jnp.ones(3)}}
    state = tx.init(params)
    w, accum = np.ones(3), np.zeros(3)
    for step in range(3):
        g = np.full(3, 0.5 * (step + 1))
        updates, state = tx.update({"conv": {"kernel": jnp.asarray(g, jnp.float32)}}, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        accum = 0.9 * accum + g + 4e-5 * w
        w = w - 0.007 * (1 - step / 100) ** 0.9 * accum
    np.testing.assert_allclose(np.asarray(params["conv"]["kernel"]), w, rtol=1e-6)


def test_train_and_eval_the_offline_config(tmp_path, data_dir, capsys):
    """`mnv2 train` runs configs/segmentation/offline.py (shrunk by overrides) and `mnv2 eval` reports
    the same mIOU from the checkpoint."""
    from mnv2_jax import workdir as workdir_lib

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config_file = os.path.join(repo, "configs", "segmentation", "offline.py")
    workdir = str(tmp_path / "run")
    overrides = {
        "dataset": TINY_DATASET, "data_dir": data_dir, "max_repeats": 1, "segmentation.crop_size": 64,
        "segmentation.depth": 32, "batch_size": 8, "eval_batch_size": 32, "total_steps": 4,
        "log_every_steps": 2, "eval_every_steps": 4, "checkpoint_every_steps": 4, "progress": False,
        "optim.warmup_epochs": 0.0,
    }  # fmt: skip
    cli.main(
        [
            "train",
            "--config",
            config_file,
            "--workdir",
            workdir,
            *[f"--config.{k}={v}" for k, v in overrides.items()],
        ]
    )
    summary = workdir_lib.read_summary(workdir)
    assert summary["task"] == "segmentation" and 0 <= summary["eval/miou"] <= 1
    assert {"eval/iou/background", "eval/pixel_acc", "params_total"} <= set(summary)
    records = workdir_lib.read_metrics(workdir)
    assert [r["step"] for r in records if "train/pixel_acc" in r] == [2, 4]
    assert records[-1]["lr"] == pytest.approx(0.004 * 8 / 16 * (1 - 3 / 4) ** 0.9)  # the 4th update's rate
    capsys.readouterr()
    cli.main(["eval", "--workdir", workdir, "--json"])
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["eval/miou"] == pytest.approx(summary["eval/miou"], abs=1e-6)
    # `mnv2 export`: the segmenter as TFLite, per-pixel logits checked against JAX's on export.
    from mnv2_jax.data.datasets import mnist_seg_offline
    from mnv2_jax.tools.interop import export, tflite

    cli.main(["export", "--workdir", workdir, "--out", str(tmp_path / "export"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["output"] == "per_pixel_logits" and report["num_classes"] == mnist_seg_offline.NUM_CLASSES
    assert report["tflite_max_rel_error"] < export.FLOAT_TOLERANCE
    image = np.zeros((1, 128, 128, 3), np.float32)
    assert tflite.run(report["tflite"], image).shape == (1, 128, 128, report["num_classes"])
    with pytest.raises(ValueError, match="object models cannot be exported; classification"):
        export.inference_function(object(), {})
    # A run initialised from another one's weights (as from ImageNet) trains: the state it starts
    # from holds no buffer twice (the train step donates it).
    finetuned = str(tmp_path / "finetuned")
    cli.main(
        [
            "train",
            "--config",
            config_file,
            "--workdir",
            finetuned,
            *[f"--config.{k}={v}" for k, v in {**overrides, "total_steps": 2, "init_from": workdir}.items()],
        ]
    )
    assert workdir_lib.read_summary(finetuned)["step"] == 2


def test_small_bn_batches_are_warned_about(data_dir, capsys):
    from mnv2_jax.tasks.segmentation import input as input_lib

    input_lib.warn_small_bn_batch(seg_config(data_dir, batch_size=8))
    assert "fewer than 12" in capsys.readouterr().err
    input_lib.warn_small_bn_batch(seg_config(data_dir, batch_size=16))
    input_lib.warn_small_bn_batch(seg_config(data_dir, batch_size=8, **{"segmentation.fine_tune_bn": False}))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("fine_tune_bn", [True, False])
def test_batch_norm_fine_tuning_on_and_off(fine_tune_bn):
    """fine_tune_bn=False: moving statistics in training, no gradient to batch norm's scale and
    offset (and the statistics stay put); the same parameter tree either way."""
    arch = spec.build_architecture(width=0.35, output_stride=16, num_classes=0, max_repeats=1)
    model = head_lib.MobileDeepLabV3(arch, 3, depth=8, fine_tune_bn=fine_tune_bn)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    assert _sizes(variables["params"]) == _sizes(
        head_lib.MobileDeepLabV3(arch, 3, depth=8).init(jax.random.PRNGKey(0), x)["params"]
    )

    def loss(params):
        out, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.PRNGKey(1)},
        )
        return jnp.sum(out**2), updates["batch_stats"]

    grads, stats = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    bn_grad = sum(float(jnp.abs(g["bn"]["scale"]).sum()) for g in (grads["stem"], grads["concat_projection"]))
    stats_moved = float(
        jnp.abs(stats["stem"]["bn"]["mean"] - variables["batch_stats"]["stem"]["bn"]["mean"]).sum()
    )
    assert float(jnp.abs(grads["stem"]["conv"]["kernel"]).sum()) > 0
    assert (bn_grad > 0) == fine_tune_bn and (stats_moved > 0) == fine_tune_bn


def test_multi_scale_and_flip_evaluation():
    """DeepLab's multi-scale + flip inference: one scale without flips is the plain softmax; with
    flips the prediction of a mirrored image is the mirrored prediction."""
    arch = spec.build_architecture(width=0.35, output_stride=16, num_classes=0, max_repeats=1)
    model = head_lib.MobileDeepLabV3(arch, 3, depth=8)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 33, 33, 3)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    assert [head_lib.scaled_size(513, s) for s in (0.5, 0.75, 1.25, 1.75)] == [257, 385, 641, 897]

    @jax.jit  # one program, one compile
    def predictions(x):
        predict = functools.partial(head_lib.predict_probabilities, model, variables)
        both = jnp.concatenate([x, x[:, :, ::-1]])  # images and their mirror images
        return (
            predict(x, (1.0,), False),
            jax.nn.softmax(model.apply(variables, x)),
            predict(both, (1.0,), True),
            predict(x, (0.5, 1.5), False),
        )

    single, plain, flipped, multi = predictions(x)
    np.testing.assert_allclose(single, plain, atol=1e-6)
    np.testing.assert_allclose(flipped[2:], flipped[:2, :, ::-1], atol=1e-5)
    assert multi.shape == (2, 33, 33, 3)
    np.testing.assert_allclose(multi.sum(-1), 1.0, atol=1e-5)
