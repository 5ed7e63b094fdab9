"""Detection input pipeline: any TFDS dataset with `coco/2017`'s features, deterministic and resumable.

It reads `image`, `image/id` and `objects/{bbox, label, area, is_crowd}` (normalised
`[ymin, xmin, ymax, xmax]` boxes) and shares the classification pipeline's machinery
(`mnv2_jax.data.input_pipeline`): per-process splits, a shuffle and augmentation that are pure
functions of `(seed, step)`, so a resumed run reads bitwise the same batches.

Train, as `ssdlite_mobilenet_v2_coco.config`: crowd boxes dropped; `ssd_random_crop` with TF's
defaults (one of seven modes with minimum object coverage 0, 0.1, 0.3, 0.5, 0.7, 0.9, 1 and the
same minimum overlap for a box to stay; aspect ratio 0.5-2, area 10-100%; the whole image with
probability 0.15), boxes clipped to the crop; bilinear resize to `resolution` squared (TF's
`fixed_shape_resizer`, aspect not kept); left-right flip; pixels in [-1, 1]. Eval: the resize only.

Batches: `image` [B, R, R, 3], `boxes` [B, G, 4], `labels` [B, G] int32 and `box_mask` [B, G]
(1 real, 0 padding) with G = `detection.max_boxes`; eval batches add the ground truth the COCO
metric needs (`is_crowd`, `area`, `image_id`, `image_size` of the original image) and `mask`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from mnv2_jax.data import input_pipeline as ip

# TF's `ssd_random_crop` defaults (`core/preprocessor.py`).
MIN_OBJECT_COVERED = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
OVERLAP_THRESHOLDS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
CROP_ASPECT_RATIO_RANGE = (0.5, 2.0)
CROP_AREA_RANGE = (0.1, 1.0)
KEEP_WHOLE_PROBABILITY = 0.15


@dataclasses.dataclass(frozen=True)
class DetectionInfo:
    num_classes: int  # foreground classes (the head adds background)
    num_train_examples: int
    num_eval_examples: int | None


def _settings(config: Any) -> ip.InputConfig:
    return ip.InputConfig.from_config(config)


def _detection(config: Any, key: str, default: Any) -> Any:
    section = config.get("detection", None)
    value = section.get(key, None) if section is not None else None
    return default if value is None else value


def dataset_info(config: Any) -> DetectionInfo:
    """Classes and split sizes; ValueError naming the key when the dataset has no boxes or its class
    count differs from `num_classes`."""
    settings = _settings(config)
    builder = ip._builder(settings)
    features = builder.info.features
    objects = features["objects"] if "objects" in features else None
    if objects is None or "bbox" not in objects.feature or "label" not in objects.feature:
        raise ValueError(
            f"config key 'dataset': {settings.dataset!r} has no boxes to detect (detection reads the "
            "features objects/bbox and objects/label, as coco/2017 and mnist_detect_offline have)"
        )
    num_classes = int(objects.feature["label"].num_classes)
    wanted = config.get("num_classes", None)
    if wanted is not None and wanted != num_classes:
        raise ValueError(
            f"config key 'num_classes': {settings.dataset!r} has {num_classes} classes, the config says "
            f"{wanted}; set num_classes=None (from the dataset) or {num_classes}"
        )
    num_eval = settings.num_eval_examples
    if num_eval is None:
        num_eval = ip._split_size(builder, ip._eval_split(settings, builder))
    return DetectionInfo(num_classes, ip._num_train_examples(settings, builder), num_eval)


def _select(ex: dict) -> dict:
    objects = ex["objects"]
    out = {
        "image": ex["image"],
        "bbox": objects["bbox"],
        "label": objects["label"],
        "is_crowd": objects["is_crowd"] if "is_crowd" in objects else None,
        "area": objects["area"] if "area" in objects else None,
        "image_id": ex["image/id"] if "image/id" in ex else None,
    }
    return {k: v for k, v in out.items() if v is not None}


def _intersection(boxes, window):
    tf = ip._tf()
    ymin = tf.maximum(boxes[:, 0], window[0])
    xmin = tf.maximum(boxes[:, 1], window[1])
    ymax = tf.minimum(boxes[:, 2], window[2])
    xmax = tf.minimum(boxes[:, 3], window[3])
    return tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)


def ssd_random_crop(image, boxes, labels, key):
    """TF's `ssd_random_crop` with a stateless sampler: `(image, boxes, labels)` of the crop."""
    tf = ip._tf()
    mode_key, crop_key, keep_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
    mode = tf.random.stateless_uniform([], mode_key, 0, len(MIN_OBJECT_COVERED), dtype=tf.int32)
    covered = tf.gather(tf.constant(MIN_OBJECT_COVERED, tf.float32), mode)
    overlap = tf.gather(tf.constant(OVERLAP_THRESHOLDS, tf.float32), mode)
    begin, size, window = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=boxes[None],
        seed=crop_key,
        min_object_covered=covered,
        aspect_ratio_range=CROP_ASPECT_RATIO_RANGE,
        area_range=CROP_AREA_RANGE,
        max_attempts=100,
        use_image_if_no_bounding_boxes=True,
    )
    window = window[0, 0]
    inside = _intersection(boxes, window)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # Boxes entirely outside go; the others stay if at least `overlap` of their area is inside.
    keep = (inside > 0) & (inside >= overlap * area)
    kept = tf.boolean_mask(boxes, keep)
    extent = tf.concat([window[2:] - window[:2]] * 2, axis=0)
    moved = tf.clip_by_value((kept - tf.concat([window[:2]] * 2, axis=0)) / extent, 0.0, 1.0)
    cropped = tf.slice(image, begin, size)
    whole = tf.random.stateless_uniform([], keep_key) < KEEP_WHOLE_PROBABILITY
    return tf.cond(
        whole,
        lambda: (image, boxes, labels),
        lambda: (cropped, moved, tf.boolean_mask(labels, keep)),
    )


def _pad(values, size: int, dtype):
    tf = ip._tf()
    values = tf.cast(values[:size], dtype)
    pad = size - tf.shape(values)[0]
    padding = [[0, pad]] + [[0, 0]] * (len(values.shape) - 1)
    return tf.pad(values, padding)


def _resize(image, resolution: int):
    """uint8 RGB -> float32 [-1, 1], `resolution` squared, bilinear (TF's fixed-shape resizer)."""
    tf = ip._tf()
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = tf.clip_by_value(tf.image.resize(image, [resolution, resolution], method="bilinear"), 0.0, 1.0)
    return (image - 0.5) * 2.0


def train_iterator(config: Any, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Endless per-process train batches from global step `start_step` on (see the module docstring;
    shards as in `input_pipeline.train_iterator`)."""
    tf = ip._tf()

    settings = _settings(config)
    builder = ip._builder(settings)
    max_boxes = int(_detection(config, "max_boxes", 100))
    random_crop = bool(_detection(config, "random_crop", True))
    steps = max(1, ip._num_train_examples(settings, builder) // settings.batch_size)
    mine, shards = ip._shards(settings)
    shard_batch = ip._local_batch(settings.batch_size, shards, "batch_size")
    decode = ip.image_decoder(builder.info.features["image"])

    def shard_batches(shard: int):
        augment_key = ip._base_key(settings.seed, shard, 1)

        def preprocess(e, i, ex):
            key = tf.random.experimental.stateless_fold_in(
                tf.random.experimental.stateless_fold_in(augment_key, e), i
            )
            crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
            image = decode(ex["image"])
            boxes = tf.reshape(tf.cast(ex["bbox"], tf.float32), [-1, 4])
            labels = tf.cast(ex["label"], tf.int32)
            if "is_crowd" in ex:  # crowd regions are not objects to learn
                solo = tf.logical_not(tf.cast(ex["is_crowd"], tf.bool))
                boxes, labels = tf.boolean_mask(boxes, solo), tf.boolean_mask(labels, solo)
            if random_crop:
                image, boxes, labels = ssd_random_crop(image, boxes, labels, crop_key)
            image = _resize(image, settings.resolution)
            if settings.flip:
                flip = tf.random.stateless_uniform([], flip_key) < 0.5
                image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
                flipped = tf.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], axis=1)
                boxes = tf.cond(flip, lambda: flipped, lambda: boxes)
            count = tf.minimum(tf.shape(labels)[0], max_boxes)
            return {
                "image": image,
                "boxes": tf.ensure_shape(_pad(boxes, max_boxes, tf.float32), [max_boxes, 4]),
                "labels": tf.ensure_shape(_pad(labels, max_boxes, tf.int32), [max_boxes]),
                "box_mask": tf.ensure_shape(_pad(tf.ones([count]), max_boxes, tf.float32), [max_boxes]),
            }

        ds = ip._train_examples(
            settings, builder, start_step, steps, shard_batch, shard, shards, select=_select
        )
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(shard_batch, drop_remainder=True)

    return ip.process_batches(mine, shard_batches)


def eval_iterator(config: Any) -> Iterator[dict[str, np.ndarray]]:
    """Per-process batches covering this process's part of the eval split exactly once, padded
    (`mask` 0) to `eval_batch_size // shards` rows per shard (see `input_pipeline.eval_iterator`)."""
    tf = ip._tf()
    import tensorflow_datasets as tfds

    settings = _settings(config)
    builder = ip._builder(settings)
    max_boxes = int(_detection(config, "max_boxes", 100))
    mine, shards = ip._shards(settings)
    shard_batch = ip._local_batch(settings.global_eval_batch_size, shards, "eval_batch_size")
    split_name = ip._eval_split(settings, builder)
    num_batches = ip.eval_batches_per_shard(settings, builder, split_name, shards, shard_batch)
    decode = ip.image_decoder(builder.info.features["image"])

    def preprocess(index, ex):
        image = decode(ex["image"])
        boxes = tf.reshape(tf.cast(ex["bbox"], tf.float32), [-1, 4])
        labels = tf.cast(ex["label"], tf.int32)
        n = tf.shape(labels)[0]
        crowd = tf.cast(ex["is_crowd"], tf.int32) if "is_crowd" in ex else tf.zeros([n], tf.int32)
        size = tf.cast(tf.shape(image)[:2], tf.float32)
        # Without a stored area (COCO's is the mask's), the box's area in pixels.
        box_area = (boxes[:, 2] - boxes[:, 0]) * size[0] * (boxes[:, 3] - boxes[:, 1]) * size[1]
        area = tf.cast(ex["area"], tf.float32) if "area" in ex else box_area
        count = tf.minimum(n, max_boxes)
        # Without a stored id, the position in this shard's part of the split (1-based).
        image_id = tf.cast(ex["image_id"], tf.int32) if "image_id" in ex else tf.cast(index + 1, tf.int32)
        return {
            "image": _resize(image, settings.resolution),
            "boxes": tf.ensure_shape(_pad(boxes, max_boxes, tf.float32), [max_boxes, 4]),
            "labels": tf.ensure_shape(_pad(labels, max_boxes, tf.int32), [max_boxes]),
            "box_mask": tf.ensure_shape(_pad(tf.ones([count]), max_boxes, tf.float32), [max_boxes]),
            "is_crowd": tf.ensure_shape(_pad(crowd, max_boxes, tf.int32), [max_boxes]),
            "area": tf.ensure_shape(_pad(area, max_boxes, tf.float32), [max_boxes]),
            "image_id": image_id,
            "image_size": tf.cast(tf.shape(image)[:2], tf.int32),
            "mask": tf.constant(1.0, tf.float32),
        }

    def shard_batches(shard: int):
        split = tfds.split_for_jax_process(split_name, process_index=shard, process_count=shards)
        ds = ip._read(builder, split, cache=False, select=_select).enumerate()
        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(shard_batch).prefetch(tf.data.AUTOTUNE)
        return ip._padded(tfds.as_numpy(ds.with_options(ip._options())), shard_batch, num_batches)

    if len(mine) == 1:
        return shard_batches(mine[0])
    return (ip._concat(parts) for parts in zip(*(shard_batches(k) for k in mine)))
