"""Input pipeline: any TFDS image-classification dataset by name, deterministic and resumable.

Train batches are a pure function of `(config.seed, step)` (and the process layout): a run resumed
at step k sees bitwise the same batches, augmentation included, as a run that never stopped. This
is what makes "rerun the command to resume" exact. How:

* training is cut into epochs of `steps_per_epoch(config)` global batches; each process reads its
  own even part of the train split (`tfds.split_for_jax_process`), undecoded, in file order;
* epoch e shuffles that part with a seed derived from `(seed, process, e)` (`reshuffle_each_iteration`
  off: the order depends on nothing else), numbers the examples, drops the per-epoch remainder and,
  when resuming mid-epoch, skips the examples already consumed -- before decoding, so skipping is cheap;
* decoding and augmentation run in a parallel, order-preserving map whose randomness is stateless,
  keyed by `(seed, process, epoch, position in epoch)`.

Two consequences: resuming mid-epoch reads (but does not decode) the epoch's examples up to the step;
and the shuffle seed goes through TensorFlow's op-seed mechanism, so a TF global seed
(`tf.random.set_seed`), if anyone sets one, must be the same in the run and in its resumption.

Preprocessing follows TF-Slim's `inception_preprocessing.py`, which produced the paper's numbers:
train = random crop covering 5-100% of the image with aspect ratio 3/4-4/3, bilinear resize, left-right
flip, optional colour distortion; eval = central 87.5% crop, bilinear resize. Pixels end in [-1, 1];
grayscale images become 3-channel RGB so that every dataset feeds the same network.

TensorFlow is imported inside functions (the package stays light to import) and never sees a GPU:
it would take memory that JAX needs. On a TPU VM the `tensorflow-cpu` build keeps libtpu for JAX.

Config keys read (`InputConfig.from_config` is the one place that lists them with their defaults):
`dataset`, `data_dir`, `train_split`, `eval_split`, `num_train_examples`, `num_eval_examples`,
`resolution`, `batch_size`, `eval_batch_size`, `shuffle_buffer`, `seed`, `cache`, `download`,
`eval_crop`, and `augment.{crop, area_range, aspect_ratio_range, min_object_covered, pad, pad_mode,
flip, color_distort}`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from mnv2_jax.data.datasets import LOCAL_DATASETS, MANUAL_DATASETS

log = logging.getLogger(__name__)

CROPS = ("inception", "pad_crop", "none")
PAD_MODES = ("constant", "reflect")
# Shown when a dataset name is unknown, next to the closest registered names.
EXAMPLE_DATASETS = ("mnist_offline", "imagenet2012", "imagenette", "cifar10", "tf_flowers")
# Small datasets are cached, undecoded, in memory unless the config says otherwise.
AUTO_CACHE_BYTES = 1 << 30
# Epochs are chained lazily; training never gets near this many.
MAX_EPOCHS = 1 << 40


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the training loop needs to know about a dataset before reading it."""

    num_classes: int
    num_train_examples: int
    num_eval_examples: int | None  # None where the builder does not know (mock data) and the config is silent


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """The input-pipeline keys of a run config, with their defaults, validated once."""

    dataset: str
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str | None = None  # None: 'validation' if the dataset has one, else 'test'
    num_train_examples: int | None = None  # None: from the builder's split info
    num_eval_examples: int | None = None  # None: from the builder's split info
    resolution: int = 224
    batch_size: int = 96  # global, over all processes
    eval_batch_size: int | None = None  # None: batch_size
    shuffle_buffer: int = 16_384
    seed: int = 0
    cache: bool | None = None  # None: cache when the prepared dataset is under 1 GiB
    download: bool = False  # let TFDS download and prepare a missing dataset (needs network)
    eval_crop: float = 0.875
    crop: str = "inception"
    area_range: tuple[float, float] = (0.05, 1.0)
    aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3)
    min_object_covered: float = 0.1
    pad: int = 4
    pad_mode: str = "constant"
    flip: bool = True
    color_distort: bool = False

    @classmethod
    def from_config(cls, config: Any) -> InputConfig:
        """Read the keys from an `ml_collections.ConfigDict` (or any mapping); missing keys take defaults."""

        def get(mapping: Any, key: str, default: Any) -> Any:
            value = mapping.get(key, None) if mapping is not None else None
            return default if value is None else value

        augment = config.get("augment", None)
        defaults = cls(dataset="")
        kwargs = {
            field.name: get(config, field.name, getattr(defaults, field.name))
            for field in dataclasses.fields(cls)
            if field.name not in _AUGMENT_KEYS
        }
        kwargs.update({key: get(augment, key, getattr(defaults, key)) for key in _AUGMENT_KEYS})
        for key in ("area_range", "aspect_ratio_range"):
            kwargs[key] = tuple(float(v) for v in kwargs[key])
        settings = cls(**kwargs)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.dataset:
            raise ValueError(
                "config.dataset must name a TFDS dataset, e.g. 'mnist_offline' or 'imagenet2012'"
            )
        if self.crop not in CROPS:
            raise ValueError(f"augment.crop must be one of {CROPS}, not {self.crop!r}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"augment.pad_mode must be one of {PAD_MODES}, not {self.pad_mode!r}")
        if not 0.0 < self.eval_crop <= 1.0:
            raise ValueError(f"eval_crop must be in (0, 1], not {self.eval_crop}")
        if self.resolution < 1 or self.batch_size < 1:
            raise ValueError("resolution and batch_size must be positive")

    @property
    def global_eval_batch_size(self) -> int:
        return self.eval_batch_size or self.batch_size


_AUGMENT_KEYS = (
    "crop",
    "area_range",
    "aspect_ratio_range",
    "min_object_covered",
    "pad",
    "pad_mode",
    "flip",
    "color_distort",
)


# --------------------------------------------------------------------------------------------------
# Datasets: finding, preparing and describing them.


def _tf():
    """Import TensorFlow with GPUs hidden: JAX owns the accelerators, tf.data runs on the host."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialised (hidden by an earlier call, or by the user)
        pass
    return tf


def _builder(settings: InputConfig):
    """The TFDS builder for `settings.dataset`, with the ValueErrors a user can act on."""
    _tf()
    import tensorflow_datasets as tfds

    name = settings.dataset
    base_name = name.split(":")[0].split("/")[0]  # 'mnist_seg_offline/tiny:1.0.0' -> 'mnist_seg_offline'
    if base_name in LOCAL_DATASETS:
        module = importlib.import_module(LOCAL_DATASETS[base_name])  # registers the name with TFDS
        module.ensure_prepared(settings.data_dir, name)
    if base_name in MANUAL_DATASETS:
        importlib.import_module(MANUAL_DATASETS[base_name])  # registers the name with TFDS
    try:
        builder = tfds.builder(name, data_dir=settings.data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        known = tfds.list_builders(with_community_datasets=False) + list(LOCAL_DATASETS)
        close = difflib.get_close_matches(name.split("/")[0].split(":")[0], list(dict.fromkeys(known)), n=5)
        raise ValueError(
            f"Unknown dataset {name!r}: TFDS has no builder of that name. "
            f"Closest names: {close or 'none'}; e.g. {list(EXAMPLE_DATASETS)}. "
            "`tfds.list_builders()` lists them all."
        ) from error
    if not builder.is_prepared() and settings.download:
        _download_and_prepare(builder)
    if not builder.is_prepared() and not _readable(builder, settings.train_split):
        raise ValueError(_not_prepared_message(builder))
    return builder


def _download_and_prepare(builder) -> None:
    import filelock

    root = os.fspath(builder.data_dir_root)
    os.makedirs(root, exist_ok=True)
    with filelock.FileLock(os.path.join(root, f"{builder.name}.lock")):
        builder.download_and_prepare()


def _readable(builder, split: str) -> bool:
    """Whether TFDS serves `split` although the builder is not prepared (`tfds.testing.mock_data`)."""
    import tensorflow_datasets as tfds

    try:
        builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    except Exception:  # TFDS raises AssertionError, FileNotFoundError, ... for missing data
        return False
    return True


def _not_prepared_message(builder) -> str:
    name, root = builder.name, os.fspath(builder.data_dir_root)
    build = f"`tfds build {name} --data_dir {root}`"
    if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        manual = os.path.join(root, "downloads", "manual")
        how = (
            f"It needs files downloaded by hand: put them in {manual} and run {build}. "
            f"TFDS says:\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
        )
        if name.startswith("imagenet2012"):
            how = (
                f"Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (register at "
                f"https://image-net.org/download-images) into {manual}, then run {build}."
            )
    else:
        how = f"Run {build} on a machine with network access, or set config.download=True."
    return f"Dataset {name!r} is not prepared in {root}. {how}"


def _split_size(builder, split: str) -> int | None:
    """Examples in `split` per the builder's split info, or None where it has none (mock data)."""
    try:
        return int(builder.info.splits[split].num_examples) or None
    except (KeyError, ValueError, TypeError):
        return None


def _eval_split(settings: InputConfig, builder) -> str:
    if settings.eval_split:
        return settings.eval_split
    return "validation" if "validation" in builder.info.splits else "test"


def _num_train_examples(settings: InputConfig, builder) -> int:
    size = _split_size(builder, settings.train_split)
    if settings.num_train_examples is not None:
        # More than the split holds would make epochs end early and break step -> batch determinism.
        if size is not None and settings.num_train_examples > size:
            raise ValueError(
                f"config.num_train_examples={settings.num_train_examples} exceeds the {size} examples "
                f"of {settings.dataset!r} split {settings.train_split!r}"
            )
        return int(settings.num_train_examples)
    if size is None:
        raise ValueError(
            f"Dataset {settings.dataset!r} reports no size for split {settings.train_split!r} "
            "(as under tfds.testing.mock_data): set config.num_train_examples."
        )
    return size


def dataset_info(config: Any) -> DatasetInfo:
    """Number of classes and split sizes of `config.dataset`; prepares 'mnist_offline' on first use.

    Raises ValueError, saying what to do, when TFDS does not know the dataset or it is not prepared.
    """
    settings = InputConfig.from_config(config)
    builder = _builder(settings)
    num_eval = settings.num_eval_examples
    if num_eval is None:
        num_eval = _split_size(builder, _eval_split(settings, builder))
    return DatasetInfo(
        num_classes=int(builder.info.features["label"].num_classes),
        num_train_examples=_num_train_examples(settings, builder),
        num_eval_examples=num_eval,
    )


def steps_per_epoch(config: Any) -> int:
    """Global batches per epoch: the train examples // batch_size (at least 1)."""
    settings = InputConfig.from_config(config)
    return max(1, dataset_info(config).num_train_examples // settings.batch_size)


def _process() -> tuple[int, int]:
    import jax

    return jax.process_index(), jax.process_count()


def _local_batch(global_batch: int, process_count: int, what: str) -> int:
    if global_batch % process_count:
        raise ValueError(f"{what} {global_batch} is not divisible by the {process_count} processes")
    return global_batch // process_count


def _should_cache(settings: InputConfig, builder) -> bool:
    if settings.cache is not None:
        return bool(settings.cache)
    size = int(getattr(builder.info, "dataset_size", 0) or 0)
    return settings.dataset.split(":")[0].split("/")[0] in LOCAL_DATASETS or 0 < size < AUTO_CACHE_BYTES


def _read(builder, split, *, cache: bool, features: tuple[str, ...] = ("image", "label")):
    """The split's `features`, undecoded and in file order: deterministic, and cheap to skip.

    Image features stay encoded (decoded in the parallel map, after any skipping)."""
    import tensorflow_datasets as tfds

    decoders = {
        name: tfds.decode.SkipDecoding()
        for name in features
        if isinstance(builder.info.features[name], tfds.features.Image)
    }
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders=decoders,
        read_config=tfds.ReadConfig(try_autocache=False, skip_prefetch=True),
    )
    ds = ds.map(lambda ex: {name: ex[name] for name in features})
    return ds.cache() if cache else ds


def _options():
    tf = _tf()
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1  # parallelism comes from the map, one image per thread
    return options


# --------------------------------------------------------------------------------------------------
# Preprocessing: pure TensorFlow functions of an encoded image (and a stateless key for training).


def image_decoder(feature) -> Callable:
    """`decode(encoded, window_fn) -> uint8 (h, w, 3)`, cropping to `window_fn(shape)` if one is given.

    JPEGs (ImageNet) are decoded only inside the crop window (`decode_and_crop_jpeg`), the main
    cost of an ImageNet input pipeline; other formats are decoded whole, then sliced.
    """
    tf = _tf()
    jpeg = feature is None or getattr(feature, "encoding_format", None) == "jpeg"

    def decode(encoded, window_fn=None):
        if jpeg:
            if window_fn is None:
                return tf.io.decode_jpeg(encoded, channels=3)
            window = tf.stack(window_fn(tf.io.extract_jpeg_shape(encoded)))
            return tf.image.decode_and_crop_jpeg(encoded, window, channels=3)
        image = feature.decode_example(encoded)
        if window_fn is not None:
            y, x, h, w = window_fn(tf.shape(image))
            image = image[y : y + h, x : x + w]
        return _to_rgb(image)

    return decode


def _to_rgb(image):
    tf = _tf()
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    return image


def central_crop_window(shape, fraction: float):
    """`(y, x, h, w)` of TF's `tf.image.central_crop(image, fraction)` (as TF-Slim's eval) on `shape`.

    Start offsets are truncated, `int((size - size * fraction) / 2)`, and the crop is what remains.
    """
    tf = _tf()
    size = tf.cast(shape[:2], tf.float64)
    start = tf.cast((size - size * fraction) / 2, tf.int32)
    extent = tf.cast(shape[:2], tf.int32) - 2 * start
    return start[0], start[1], extent[0], extent[1]


def inception_crop_window(shape, key, settings: InputConfig):
    """`(y, x, h, w)` of TF-Slim's `distorted_bounding_box_crop`, with a stateless sampler."""
    tf = _tf()
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.cast(shape, tf.int32),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4]),
        seed=key,
        min_object_covered=settings.min_object_covered,
        aspect_ratio_range=settings.aspect_ratio_range,
        area_range=settings.area_range,
        max_attempts=100,
        use_image_if_no_bounding_boxes=True,
    )
    return begin[0], begin[1], size[0], size[1]


def distort_color(image, key):
    """TF-Slim's `distort_color` (not fast mode), stateless: brightness, saturation, hue and contrast
    in one of four random orders, then clipped. `image` is float in [0, 1] with 3 channels."""
    tf = _tf()
    order_key, *keys = tf.unstack(tf.random.experimental.stateless_split(key, 5))

    def brightness(x):
        return tf.image.stateless_random_brightness(x, 32.0 / 255.0, keys[0])

    def saturation(x):
        return tf.image.stateless_random_saturation(x, 0.5, 1.5, keys[1])

    def hue(x):
        return tf.image.stateless_random_hue(x, 0.2, keys[2])

    def contrast(x):
        return tf.image.stateless_random_contrast(x, 0.5, 1.5, keys[3])

    orders = (
        (brightness, saturation, hue, contrast),
        (saturation, brightness, contrast, hue),
        (contrast, hue, brightness, saturation),
        (hue, saturation, contrast, brightness),
    )

    def apply(ops):
        def fn():
            x = image
            for op in ops:
                x = op(x)
            return x

        return fn

    choice = tf.random.stateless_uniform([], order_key, 0, len(orders), dtype=tf.int32)
    distorted = tf.switch_case(choice, [apply(ops) for ops in orders])
    distorted.set_shape(image.shape)
    return tf.clip_by_value(distorted, 0.0, 1.0)


def _finish(image, resolution: int):
    """uint8 RGB -> float32 resolution x resolution in [0, 1] (bilinear, as TF-Slim)."""
    tf = _tf()
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = tf.image.resize(image, [resolution, resolution], method="bilinear")
    return tf.clip_by_value(image, 0.0, 1.0)


def _to_unit_range(image):
    return (image - 0.5) * 2.0


def preprocess_train(encoded, key, settings: InputConfig, decode: Callable):
    """One training image: decode, crop (per `augment.crop`), resize, flip, colour; in [-1, 1]."""
    tf = _tf()
    crop_key, flip_key, color_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
    if settings.crop == "inception":
        image = decode(encoded, lambda shape: inception_crop_window(shape, crop_key, settings))
    elif settings.crop == "pad_crop":
        image = decode(encoded)
        pad = settings.pad
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode=settings.pad_mode.upper())
        image = tf.image.stateless_random_crop(padded, tf.shape(image), crop_key)
    else:
        image = decode(encoded)
    image = _finish(image, settings.resolution)
    if settings.flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_key)
    if settings.color_distort:
        image = distort_color(image, color_key)
    return _to_unit_range(image)


def preprocess_eval(encoded, settings: InputConfig, decode: Callable):
    """One evaluation image: TF-Slim's central crop (`eval_crop`), bilinear resize; in [-1, 1]."""
    window_fn = None
    if settings.eval_crop < 1.0:
        window_fn = lambda shape: central_crop_window(shape, settings.eval_crop)  # noqa: E731
    return _to_unit_range(_finish(decode(encoded, window_fn), settings.resolution))


# --------------------------------------------------------------------------------------------------
# Iterators.


def _base_key(seed: int, process_index: int, stream: int):
    """A stateless-RNG key for one of the pipeline's random streams (0: shuffling, 1: augmentation)."""
    tf = _tf()
    key = tf.constant([seed >> 32, seed & 0xFFFFFFFF], tf.int64)
    key = tf.random.experimental.stateless_fold_in(key, process_index)
    return tf.random.experimental.stateless_fold_in(key, stream)


def _train_examples(
    settings: InputConfig,
    builder,
    start_step: int,
    steps: int,
    local_batch: int,
    features: tuple[str, ...] = ("image", "label"),
):
    """The stream of `(epoch, position, example)` that training reads from `start_step` on, undecoded."""
    tf = _tf()
    import tensorflow_datasets as tfds

    process_index, process_count = _process()
    split = tfds.split_for_jax_process(
        settings.train_split, process_index=process_index, process_count=process_count
    )
    base = _read(builder, split, cache=_should_cache(settings, builder), features=features)
    # tf.data's shuffle mixes TF's global seed (tf.random.set_seed) into its op seed, and with one
    # set it cannot take the per-epoch tensor seed below at all. The stream must depend on
    # config.seed alone, so the global seed is cleared (anyone who set one loses it here).
    tf.random.set_seed(None)
    shuffle_key = _base_key(settings.seed, process_index, 0)
    per_epoch = steps * local_batch
    start_epoch, skip = divmod(start_step, steps)

    def epoch(e):
        seed = tf.random.stateless_uniform(
            [], tf.random.experimental.stateless_fold_in(shuffle_key, e), None, None, dtype=tf.int64
        )
        ds = base.shuffle(settings.shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
        # Filter rather than take: the whole part is read each epoch, so that an in-memory cache
        # completes in the first epoch and the remainder is dropped before it is decoded.
        ds = ds.enumerate().filter(lambda i, ex: i < per_epoch)
        ds = ds.skip(tf.where(e == start_epoch, tf.constant(skip * local_batch, tf.int64), 0))
        return ds.map(lambda i, ex: (e, i, ex))

    return tf.data.Dataset.range(start_epoch, MAX_EPOCHS).flat_map(epoch)


def train_iterator(config: Any, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Endless per-process train batches from global step `start_step` on.

    Yields `{'image': float32 (B, R, R, 3) in [-1, 1], 'label': int32 (B,)}` with
    B = batch_size // jax.process_count(). The batch at step k depends only on (config, k): resuming
    at k gives bitwise the batches an uninterrupted run reads after consuming k batches.
    """
    tf = _tf()
    import tensorflow_datasets as tfds

    settings = InputConfig.from_config(config)
    builder = _builder(settings)
    steps = max(1, _num_train_examples(settings, builder) // settings.batch_size)
    process_index, process_count = _process()
    local_batch = _local_batch(settings.batch_size, process_count, "batch_size")
    decode = image_decoder(builder.info.features["image"])
    augment_key = _base_key(settings.seed, process_index, 1)

    def preprocess(e, i, ex):
        key = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(augment_key, e), i
        )
        return {
            "image": preprocess_train(ex["image"], key, settings, decode),
            "label": tf.cast(ex["label"], tf.int32),
        }

    ds = _train_examples(settings, builder, start_step, steps, local_batch)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return iter(tfds.as_numpy(ds.with_options(_options())))


def eval_iterator(config: Any) -> Iterator[dict[str, np.ndarray]]:
    """Per-process batches covering this process's part of the eval split exactly once.

    Every batch has `eval_batch_size // jax.process_count()` rows and a float32 'mask' (1 real,
    0 padding); the last is padded. With several processes all yield the same number of batches
    (the shorter parts get an all-padding batch), since each eval step is a collective.
    """
    tf = _tf()
    import tensorflow_datasets as tfds

    settings = InputConfig.from_config(config)
    builder = _builder(settings)
    process_index, process_count = _process()
    local_batch = _local_batch(settings.global_eval_batch_size, process_count, "eval_batch_size")
    split_name = _eval_split(settings, builder)
    split = tfds.split_for_jax_process(split_name, process_index=process_index, process_count=process_count)
    num_batches = None
    if process_count > 1:
        total = settings.num_eval_examples or _split_size(builder, split_name)
        if total is None:
            raise ValueError(f"Split {split_name!r} reports no size: set config.num_eval_examples")
        num_batches = _ceil_div(_ceil_div(total, process_count), local_batch)  # of the largest part
    decode = image_decoder(builder.info.features["image"])

    def preprocess(ex):
        return {
            "image": preprocess_eval(ex["image"], settings, decode),
            "label": tf.cast(ex["label"], tf.int32),
            "mask": tf.constant(1.0, tf.float32),
        }

    ds = _read(builder, split, cache=False)
    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch).prefetch(tf.data.AUTOTUNE)
    return _padded(tfds.as_numpy(ds.with_options(_options())), local_batch, num_batches)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _padded(batches, size: int, num_batches: int | None) -> Iterator[dict[str, np.ndarray]]:
    count = 0
    template = None
    for batch in batches:
        template = batch
        yield _pad_batch(batch, size)
        count += 1
    while num_batches is not None and count < num_batches:
        if template is None:  # this process got no examples at all; shapes are known all the same
            raise ValueError("A process's part of the eval split is empty; use fewer processes.")
        yield _pad_batch({k: v[:0] for k, v in template.items()}, size)
        count += 1


def _pad_batch(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    missing = size - len(batch["label"])
    if missing == 0:
        return batch
    return {k: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}


# --------------------------------------------------------------------------------------------------
# Benchmark.


def synthetic_jpeg_dataset(n: int, size: tuple[int, int] = (375, 500), seed: int = 0):
    """`n` random JPEG-encoded RGB images of `size` (height, width) as a tf.data dataset of
    `{'image': encoded string, 'label': int64}`: ImageNet-like input without ImageNet.

    The images are smooth noise (low-resolution noise upsampled) so that they compress about as well
    as photographs do; pure noise would make unrealistically large JPEGs.
    """
    tf = _tf()
    rng = np.random.default_rng(seed)
    height, width = size
    encoded, labels = [], []
    for _ in range(n):
        coarse = rng.uniform(0, 255, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32)
        image = tf.image.resize(coarse[None], [height, width], method="bicubic")[0]
        image = image + rng.normal(0, 8, (height, width, 3)).astype(np.float32)
        image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
        encoded.append(tf.io.encode_jpeg(image, quality=90).numpy())
        labels.append(int(rng.integers(0, 1000)))
    return tf.data.Dataset.from_tensor_slices({"image": encoded, "label": np.asarray(labels, np.int64)})


def input_benchmark(config: Any, num_batches: int, synthetic: bool | None = None) -> float:
    """Images per second of the train input pipeline alone (this process), after one warm-up batch.

    `synthetic=None` reads `config.dataset` when it is available and otherwise decodes synthetic
    500x375 JPEGs with the same train preprocessing (ImageNet's cost profile); True forces that.
    """
    tf = _tf()
    import tensorflow_datasets as tfds

    settings = InputConfig.from_config(config)
    if synthetic is None:
        try:
            _builder(settings)
            synthetic = False
        except ValueError as error:
            log.warning("input benchmark on synthetic JPEGs: %s", error)
            synthetic = True
    if synthetic:
        _, process_count = _process()
        local_batch = _local_batch(settings.batch_size, process_count, "batch_size")
        decode = image_decoder(None)
        key = _base_key(settings.seed, 0, 1)

        def preprocess(i, ex):
            image_key = tf.random.experimental.stateless_fold_in(key, i)
            return {
                "image": preprocess_train(ex["image"], image_key, settings, decode),
                "label": tf.cast(ex["label"], tf.int32),
            }

        ds = synthetic_jpeg_dataset(min(256, local_batch * 4)).cache().repeat().enumerate()
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        batches = iter(tfds.as_numpy(ds.with_options(_options())))
    else:
        batches = train_iterator(config, 0)
    batch = next(batches)  # warm-up: pipeline start, first shuffle buffer, caches
    start = time.perf_counter()
    images = 0
    for _ in range(num_batches):
        batch = next(batches)
        images += len(batch["label"])
    return images / (time.perf_counter() - start)


def input_benchmark_synthetic(resolution: int = 224, batch_size: int = 32, num_batches: int = 20) -> float:
    """Images per second of the 'inception' train preprocessing on synthetic 500x375 JPEGs (no dataset
    needed): what `mnv2 bench --input` reports. Flip and colour distortion follow the slim recipe."""
    config = {
        "dataset": "synthetic",
        "resolution": resolution,
        "batch_size": batch_size,
        "augment": {"crop": "inception", "flip": True, "color_distort": False},
    }
    return input_benchmark(config, num_batches, synthetic=True)
