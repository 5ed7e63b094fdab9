"""Segmentation input: TFDS datasets with a per-pixel `segmentation_mask`, as TF DeepLab feeds them.

Train (DeepLab's `input_preprocess.py`): scale the image and its label map by a random factor from
{min_scale, min_scale + scale_step, ..., max_scale} (0.5-2.0 in steps of 0.25; image bilinear, labels
nearest neighbour, both with `align_corners=True`), pad bottom/right to at least the crop size (the
image with the mean pixel 127.5, which is 0 after scaling to [-1, 1]; the labels with 255, ignored),
take a random `crop_size` x `crop_size` crop of both (`segmentation.crop_size`, default `resolution`)
and flip both left-right with probability 0.5.
Eval: each image whole, padded bottom/right to `resolution` (DeepLab's `eval_crop_size`), labels
padded with 255; an image larger than that is an error naming `resolution`.

Batches are `{'image': float32 (B, R, R, 3) in [-1, 1], 'label': int32 (B, R, R)}`, eval batches
also a float32 `mask` (1 real, 0 padding example). Determinism and resumption are the classification
pipeline's (`mnv2_jax.data.input_pipeline`: the batch at step k is a function of the config and k),
and so is everything about finding, preparing and splitting a dataset. A label other than 255 that
is not below the dataset's class count stops the iterator with a ValueError.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from mnv2_jax.data import image_ops
from mnv2_jax.data import input_pipeline as base

MASK_FEATURE = "segmentation_mask"
IGNORE_LABEL = 255
MEAN_PIXEL = 127.5
# TF DeepLab: "use at least batch size larger than 12" when batch norm is fine-tuned.
MIN_BN_BATCH = 12


@dataclasses.dataclass(frozen=True)
class SegmentationInputConfig:
    """The segmentation-specific input keys (`segmentation.*`), validated once."""

    crop_size: int | None = None  # None: the config's resolution
    min_scale: float = 0.5
    max_scale: float = 2.0
    scale_step: float = 0.25
    flip: bool = True

    @classmethod
    def from_config(cls, config: Any) -> SegmentationInputConfig:
        seg = config.get("segmentation", None) or {}
        augment = config.get("augment", None) or {}
        values = {
            "crop_size": seg.get("crop_size", None) or config.get("resolution", None),
            "min_scale": seg.get("min_scale", cls.min_scale),
            "max_scale": seg.get("max_scale", cls.max_scale),
            "scale_step": seg.get("scale_step", cls.scale_step),
            "flip": augment.get("flip", cls.flip),
        }
        settings = cls(**{k: v for k, v in values.items()})
        if not 0 < settings.min_scale <= settings.max_scale:
            raise ValueError(
                "config keys 'segmentation.min_scale' and 'segmentation.max_scale': need "
                f"0 < min_scale <= max_scale, got {settings.min_scale} and {settings.max_scale}"
            )
        if not isinstance(settings.crop_size, int) or settings.crop_size < 1:
            raise ValueError(
                f"config key 'segmentation.crop_size': must be an integer >= 1, got {settings.crop_size!r}"
            )
        if settings.scale_step < 0:
            raise ValueError(
                f"config key 'segmentation.scale_step': must be >= 0 (0 = any scale), got {settings.scale_step}"
            )
        return settings


def check_has_masks(builder, dataset: str) -> None:
    """A ValueError naming `dataset` when its examples carry no per-pixel labels."""
    features = builder.info.features
    if MASK_FEATURE not in features or "image" not in features:
        raise ValueError(
            f"config key 'dataset': {dataset!r} has no {MASK_FEATURE!r} feature (its features: "
            f"{', '.join(features.keys())}); the segmentation task needs per-pixel labels, e.g. "
            "'mnist_seg_offline' or 'voc2012_seg_aug'"
        )


def dataset_metadata(builder) -> dict[str, Any]:
    """`num_classes`, `ignore_label` and `class_names` from the builder's metadata (None where absent)."""
    metadata = builder.info.metadata or {}
    return {key: metadata.get(key) for key in ("num_classes", "ignore_label", "class_names")}


def dataset_info(config: Any) -> base.DatasetInfo:
    settings = base.InputConfig.from_config(config)
    builder = base._builder(settings)
    check_has_masks(builder, settings.dataset)
    num_classes = dataset_metadata(builder)["num_classes"] or config.get("num_classes", None)
    if not num_classes:
        raise ValueError(
            f"config key 'num_classes': dataset {settings.dataset!r} does not say how many classes its "
            "masks have; set num_classes"
        )
    num_eval = settings.num_eval_examples
    if num_eval is None:
        num_eval = base._split_size(builder, base._eval_split(settings, builder))
    return base.DatasetInfo(
        num_classes=int(num_classes),
        num_train_examples=base._num_train_examples(settings, builder),
        num_eval_examples=num_eval,
    )


def _decoders(builder):
    """`decode(encoded_image, encoded_mask) -> (uint8 (h, w, 3), uint8 (h, w, 1))`."""
    image_feature = builder.info.features["image"]
    mask_feature = builder.info.features[MASK_FEATURE]

    def decode(image, mask):
        return image_ops._to_rgb(image_feature.decode_example(image)), mask_feature.decode_example(mask)

    return decode


def _check_labels(mask, num_classes: int, dataset: str):
    """`mask` unchanged, or an InvalidArgumentError (turned into a ValueError by `_checked`)."""
    tf = base._tf()
    ok = tf.reduce_all((tf.cast(mask, tf.int32) < num_classes) | (tf.cast(mask, tf.int32) == IGNORE_LABEL))
    bad = tf.reduce_max(tf.where(tf.cast(mask, tf.int32) == IGNORE_LABEL, 0, tf.cast(mask, tf.int32)))
    message = (
        f"LABEL_RANGE: dataset {dataset!r}: {MASK_FEATURE} holds a label outside 0..{num_classes - 1} "
        f"(config key 'num_classes' = {num_classes}) that is not the ignore label {IGNORE_LABEL}:"
    )
    with tf.control_dependencies([tf.debugging.Assert(ok, [message, bad], summarize=1)]):
        return tf.identity(mask)


def _checked(
    batches: Iterator[dict[str, np.ndarray]], tag: str, hint: str = ""
) -> Iterator[dict[str, np.ndarray]]:
    """A TensorFlow assertion whose message starts with `tag` (`_check_labels`, `preprocess_eval`)
    as a ValueError with that message."""
    failed = base._tf().errors.InvalidArgumentError  # bound now: TF may be gone when the generator closes
    try:
        yield from batches
    except failed as error:
        text = str(error.message)
        if f"{tag}: " not in text:
            raise
        detail = text[text.index(f"{tag}: ") + len(tag) + 2 :].split("\n")[0]
        # TF prints the assertion's string tensors quoted, with escaped quotes and in brackets.
        detail = detail.replace("\\'", "'").replace("] [", " ").rstrip("]")
        raise ValueError(detail + hint) from None


def random_scale(image, label, key, settings: SegmentationInputConfig):
    """DeepLab's `randomly_scale_image_and_label`: one factor for both, image bilinear and labels
    nearest neighbour (both `align_corners=True`). `image` float (h, w, 3), `label` uint8 (h, w, 1)."""
    tf = base._tf()
    if settings.min_scale == settings.max_scale:
        scale = tf.constant(settings.min_scale, tf.float32)
    elif settings.scale_step == 0:
        scale = tf.random.stateless_uniform([], key, settings.min_scale, settings.max_scale)
    else:
        steps = int(round((settings.max_scale - settings.min_scale) / settings.scale_step)) + 1
        index = tf.random.stateless_uniform([], key, 0, steps, dtype=tf.int32)
        scale = settings.min_scale + tf.cast(index, tf.float32) * settings.scale_step
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    size = tf.cast(shape * scale, tf.int32)
    # `tf.compat.v1.image.resize_*(align_corners=True)` without its deprecation warning.
    image = tf.raw_ops.ResizeBilinear(images=image[None], size=size, align_corners=True)[0]
    label = tf.raw_ops.ResizeNearestNeighbor(images=label[None], size=size, align_corners=True)[0]
    return image, label


def pad_to(image, label, height, width):
    """Pad bottom/right to (height, width): the image with the mean pixel, the labels with 255."""
    tf = base._tf()
    pad_h = tf.maximum(height - tf.shape(image)[0], 0)
    pad_w = tf.maximum(width - tf.shape(image)[1], 0)
    paddings = [[0, pad_h], [0, pad_w], [0, 0]]
    image = tf.pad(image, paddings, constant_values=MEAN_PIXEL)
    label = tf.pad(label, paddings, constant_values=IGNORE_LABEL)
    return image, label


def preprocess_train(image, label, key, crop: int, settings: SegmentationInputConfig):
    """Random scale, pad, random crop, flip. `image` uint8 (h, w, 3), `label` uint8 (h, w, 1) ->
    float32 (crop, crop, 3) in [-1, 1] and int32 (crop, crop)."""
    tf = base._tf()
    scale_key, crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
    image, label = random_scale(tf.cast(image, tf.float32), label, scale_key, settings)
    image, label = pad_to(image, label, crop, crop)
    both = tf.concat([image, tf.cast(label, tf.float32)], axis=-1)
    both = tf.image.stateless_random_crop(both, [crop, crop, 4], crop_key)
    if settings.flip:
        both = tf.image.stateless_random_flip_left_right(both, flip_key)
    return both[..., :3] / MEAN_PIXEL - 1.0, tf.cast(both[..., 3], tf.int32)


def preprocess_eval(image, label, size: int):
    """The whole image padded bottom/right to `size` x `size`; the labels padded with 255."""
    tf = base._tf()
    static = image.shape[:2]
    if any(d is not None and d > size for d in static):
        raise ValueError(
            f"the eval images are {static[0]} x {static[1]}, larger than config key 'resolution' = {size}; "
            "raise resolution (eval images are padded to it, never cropped)"
        )
    fits = tf.reduce_all(tf.shape(image)[:2] <= size)
    message = f"EVAL_SIZE: an eval image is larger than config key 'resolution' = {size}:"
    with tf.control_dependencies([tf.debugging.Assert(fits, [message, tf.shape(image)[:2]])]):
        image, label = pad_to(tf.cast(image, tf.float32), label, size, size)
    image = tf.ensure_shape(image, [size, size, 3])
    label = tf.ensure_shape(label, [size, size, 1])
    return image / MEAN_PIXEL - 1.0, tf.cast(label[..., 0], tf.int32)


def warn_small_bn_batch(config: Any) -> None:
    """DeepLab fine-tunes batch norm only with batches of at least 12 per normalisation group."""
    seg = config.get("segmentation", None) or {}
    if not seg.get("fine_tune_bn", True):
        return
    per_group = config.get("bn_group_size", None) or config.batch_size
    if per_group < MIN_BN_BATCH:
        print(
            f"WARNING: batch norm is fine-tuned (segmentation.fine_tune_bn) on {per_group} examples per "
            f"group, fewer than {MIN_BN_BATCH}: DeepLab's batch statistics are unreliable that small. "
            "Raise batch_size (or bn_group_size), or set segmentation.fine_tune_bn=false.",
            file=sys.stderr,
            flush=True,
        )


def train_iterator(config: Any, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Endless per-process train batches from global step `start_step` on (see the module docstring);
    sharded as `input_pipeline.train_iterator` (one stream per shard, `data_shards`)."""
    tf = base._tf()

    settings = base.InputConfig.from_config(config)
    seg = SegmentationInputConfig.from_config(config)
    builder = base._builder(settings)
    check_has_masks(builder, settings.dataset)
    num_classes = int(config.get("num_classes", None) or dataset_info(config).num_classes)
    steps = max(1, base._num_train_examples(settings, builder) // settings.batch_size)
    mine, shards = base._shards(settings)
    shard_batch = base._local_batch(settings.batch_size, shards, "batch_size")
    decode = _decoders(builder)
    features = ("image", MASK_FEATURE)

    def shard_batches(shard: int):
        augment_key = base._base_key(settings.seed, shard, 1)

        def preprocess(e, i, ex):
            key = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(augment_key, e), i
            )
            image, label = decode(ex["image"], ex[MASK_FEATURE])
            label = _check_labels(label, num_classes, settings.dataset)
            image, label = preprocess_train(image, label, key, seg.crop_size, seg)
            return {"image": image, "label": label}

        ds = base._train_examples(
            settings, builder, start_step, steps, shard_batch, shard, shards, features=features
        )
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(shard_batch, drop_remainder=True)

    return _checked(base.process_batches(mine, shard_batches), "LABEL_RANGE")


def eval_iterator(config: Any) -> Iterator[dict[str, np.ndarray]]:
    """Per-process batches covering this process's part of the eval split exactly once, padded and
    sharded as `input_pipeline.eval_iterator`'s (padding examples have `mask` 0)."""
    tf = base._tf()
    import tensorflow_datasets as tfds

    settings = base.InputConfig.from_config(config)
    builder = base._builder(settings)
    check_has_masks(builder, settings.dataset)
    num_classes = int(config.get("num_classes", None) or dataset_info(config).num_classes)
    mine, shards = base._shards(settings)
    shard_batch = base._local_batch(settings.global_eval_batch_size, shards, "eval_batch_size")
    split_name = base._eval_split(settings, builder)
    num_batches = base.eval_batches_per_shard(settings, builder, split_name, shards, shard_batch)
    decode = _decoders(builder)

    def preprocess(ex):
        image, label = decode(ex["image"], ex[MASK_FEATURE])
        label = _check_labels(label, num_classes, settings.dataset)
        image, label = preprocess_eval(image, label, settings.resolution)
        return {"image": image, "label": label, "mask": tf.constant(1.0, tf.float32)}

    def shard_batches(shard: int):
        split = tfds.split_for_jax_process(split_name, process_index=shard, process_count=shards)
        ds = base._read(builder, split, cache=False, features=("image", MASK_FEATURE))
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(shard_batch).prefetch(tf.data.AUTOTUNE)
        batches = tfds.as_numpy(ds.with_options(base._options()))
        batches = _checked(
            _checked(batches, "LABEL_RANGE"), "EVAL_SIZE", " (height, width); raise resolution"
        )
        return base._padded(batches, shard_batch, num_batches)

    if len(mine) == 1:
        return shard_batches(mine[0])
    return (base._concat(parts) for parts in zip(*(shard_batches(k) for k in mine)))
