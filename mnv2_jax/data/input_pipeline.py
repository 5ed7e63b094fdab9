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
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from mnv2_jax.data.datasets import LOCAL_DATASETS, MANUAL_DATASETS
from mnv2_jax.data.image_ops import (  # noqa: F401 - part of this module's interface
    _tf,
    central_crop_window,
    image_decoder,
    inception_crop_window,
    preprocess_eval,
    preprocess_train,
)

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
    data_shards: int | None = None  # parts the input streams split into; None: one per process
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
        if self.data_shards is not None and (self.data_shards < 1 or self.batch_size % self.data_shards):
            raise ValueError(
                f"config key 'data_shards': must be >= 1 and divide batch_size={self.batch_size}, "
                f"got {self.data_shards}"
            )

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


def _builder(settings: InputConfig):
    """The TFDS builder for `settings.dataset`, with the ValueErrors a user can act on.

    TensorFlow is imported (GPUs hidden) only once the dataset is known to be at hand or
    downloadable: finding the builder and checking the download host need TFDS alone, so a
    dataset that cannot be had fails without the seconds TensorFlow takes to load.
    """
    import tensorflow_datasets as tfds

    name = settings.dataset
    base, _, variant = name.split(":")[0].partition("/")  # 'name/config:version'
    if base in LOCAL_DATASETS:
        _tf()  # before TFDS writes anything with it
        module = importlib.import_module(LOCAL_DATASETS[base])  # registers the name with TFDS
        module.ensure_prepared(settings.data_dir, *([variant] if variant else []))
    if base in MANUAL_DATASETS:
        importlib.import_module(MANUAL_DATASETS[base])  # registers the name with TFDS
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
    if not is_prepared(builder) and settings.download:
        _download_and_prepare(builder)
    _tf()
    if not is_prepared(builder) and not _readable(builder, settings.train_split):
        raise ValueError(_not_prepared_message(builder))
    return builder


def is_prepared(builder) -> bool:
    """`builder.is_prepared()`, without the warning TFDS logs when the dataset's folder is absent."""
    return builder.data_path.exists() and builder.is_prepared()


def _download_and_prepare(builder) -> None:
    import filelock

    from mnv2_jax.data import download

    # Fail in seconds, before anything is written, when the download host does not answer
    # (TFDS itself would retry for minutes).
    download.check_reachable(builder)
    _tf()
    root = os.fspath(builder.data_dir_root)
    os.makedirs(root, exist_ok=True)
    with filelock.FileLock(os.path.join(root, f"{builder.name}.lock")):
        if builder.is_prepared():  # another process prepared it while this one waited
            return
        from mnv2_jax import progress

        with progress.phase(f"downloading and preparing {builder.name} with TFDS in {root} (once)"):
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


def _shards(settings: InputConfig) -> tuple[list[int], int]:
    """`(this process's shard indices, shard count)`: process i of P reads shards i*S/P ... (i+1)*S/P - 1.

    Each shard is a stream of its own (a part of the split, its own shuffling and augmentation keys)
    that fills a contiguous slice of every global batch. The default is one shard per process. A
    fixed `data_shards` makes the global batches independent of how many processes read them:
    one process reading 2 shards yields what 2 processes reading one each yield together.
    """
    process_index, process_count = _process()
    count = settings.data_shards or process_count
    if count % process_count:
        raise ValueError(
            f"config key 'data_shards': {count} shards do not divide over {process_count} processes; "
            "use a multiple of the process count"
        )
    per_process = count // process_count
    return list(range(process_index * per_process, (process_index + 1) * per_process)), count


def _concat(batches: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return (
        batches[0] if len(batches) == 1 else {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    )


def _local_batch(global_batch: int, parts: int, what: str) -> int:
    if global_batch % parts:
        raise ValueError(
            f"{what} {global_batch} is not divisible by the {parts} input shards "
            "(one per process unless config key 'data_shards' says otherwise)"
        )
    return global_batch // parts


def _should_cache(settings: InputConfig, builder) -> bool:
    if settings.cache is not None:
        return bool(settings.cache)
    size = int(getattr(builder.info, "dataset_size", 0) or 0)
    return settings.dataset.split(":")[0].split("/")[0] in LOCAL_DATASETS or 0 < size < AUTO_CACHE_BYTES


def _read(
    builder,
    split,
    *,
    cache: bool,
    features: tuple[str, ...] = ("image", "label"),
    select: Callable | None = None,
):
    """The split's `features`, undecoded and in file order: deterministic, and cheap to skip.

    `select(example) -> dict`, if given, builds the task's example from the whole one instead
    (detection: the boxes inside `objects`). Image features stay encoded either way (decoded in
    the parallel map, after any skipping)."""
    import tensorflow_datasets as tfds

    decoders = {
        name: tfds.decode.SkipDecoding()
        for name in (builder.info.features.keys() if select is not None else features)
        if isinstance(builder.info.features[name], tfds.features.Image)
    }
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders=decoders,
        read_config=tfds.ReadConfig(try_autocache=False, skip_prefetch=True),
    )
    ds = ds.map(select or (lambda ex: {name: ex[name] for name in features}))
    return ds.cache() if cache else ds


def _options():
    tf = _tf()
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1  # parallelism comes from the map, one image per thread
    return options


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
    shard: int,
    shards: int,
    features: tuple[str, ...] = ("image", "label"),
    select: Callable | None = None,
):
    """The stream of `(epoch, position, example)` of one shard from `start_step` on, undecoded
    (`features` and `select` as in `_read`)."""
    tf = _tf()
    import tensorflow_datasets as tfds

    split = tfds.split_for_jax_process(settings.train_split, process_index=shard, process_count=shards)
    base = _read(builder, split, cache=_should_cache(settings, builder), features=features, select=select)
    # tf.data's shuffle mixes TF's global seed (tf.random.set_seed) into its op seed, and with one
    # set it cannot take the per-epoch tensor seed below at all. The stream must depend on
    # config.seed alone, so the global seed is cleared (anyone who set one loses it here).
    tf.random.set_seed(None)
    shuffle_key = _base_key(settings.seed, shard, 0)
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
    B = batch_size // jax.process_count(). The batch at step k depends only on (config, k) and the
    shard count (`data_shards`, default the process count): resuming at k gives bitwise the batches
    an uninterrupted run reads after consuming k batches.
    """
    tf = _tf()

    settings = InputConfig.from_config(config)
    builder = _builder(settings)
    steps = max(1, _num_train_examples(settings, builder) // settings.batch_size)
    mine, shards = _shards(settings)
    shard_batch = _local_batch(settings.batch_size, shards, "batch_size")
    decode = image_decoder(builder.info.features["image"])

    def shard_batches(shard: int):
        augment_key = _base_key(settings.seed, shard, 1)

        def preprocess(e, i, ex):
            key = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(augment_key, e), i
            )
            return {
                "image": preprocess_train(ex["image"], key, settings, decode),
                "label": tf.cast(ex["label"], tf.int32),
            }

        ds = _train_examples(settings, builder, start_step, steps, shard_batch, shard, shards)
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(shard_batch, drop_remainder=True)

    return process_batches(mine, shard_batches)


def process_batches(
    mine: Sequence[int], shard_batches: Callable[[int], Any]
) -> Iterator[dict[str, np.ndarray]]:
    """This process's train batches as NumPy: the `tf.data` batches of its shards `mine`
    (`shard_batches(shard)`) side by side, one slice of the global batch each, prefetched. Every
    task's train input ends here."""
    tf = _tf()
    import tensorflow_datasets as tfds

    if len(mine) == 1:
        ds = shard_batches(mine[0])
    else:  # this process's shards side by side: one slice of the global batch each
        ds = tf.data.Dataset.zip(tuple(shard_batches(k) for k in mine)).map(
            lambda *parts: {key: tf.concat([p[key] for p in parts], 0) for key in parts[0]}
        )
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return iter(tfds.as_numpy(ds.with_options(_options())))


def eval_batches_per_shard(
    settings: InputConfig, builder: Any, split_name: str, shards: int, shard_batch: int
) -> int | None:
    """How many eval batches each shard yields when the split is cut into `shards` parts: those of
    the largest part, so that every process steps through the same count (None with one shard:
    the split's own end)."""
    if shards <= 1:
        return None
    total = settings.num_eval_examples or _split_size(builder, split_name)
    if total is None:
        raise ValueError(f"Split {split_name!r} reports no size: set config.num_eval_examples")
    return _ceil_div(_ceil_div(total, shards), shard_batch)


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
    mine, shards = _shards(settings)
    shard_batch = _local_batch(settings.global_eval_batch_size, shards, "eval_batch_size")
    split_name = _eval_split(settings, builder)
    num_batches = eval_batches_per_shard(settings, builder, split_name, shards, shard_batch)
    decode = image_decoder(builder.info.features["image"])

    def preprocess(ex):
        return {
            "image": preprocess_eval(ex["image"], settings, decode),
            "label": tf.cast(ex["label"], tf.int32),
            "mask": tf.constant(1.0, tf.float32),
        }

    def shard_batches(shard: int):
        split = tfds.split_for_jax_process(split_name, process_index=shard, process_count=shards)
        ds = _read(builder, split, cache=False)
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(shard_batch).prefetch(tf.data.AUTOTUNE)
        return _padded(tfds.as_numpy(ds.with_options(_options())), shard_batch, num_batches)

    if len(mine) == 1:
        return shard_batches(mine[0])
    return (_concat(parts) for parts in zip(*(shard_batches(k) for k in mine)))


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
    missing = size - len(batch["mask"])
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
