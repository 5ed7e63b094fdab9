"""Image preprocessing: pure TensorFlow functions of an encoded image (and, for training, a
stateless random key), following TF-Slim's `inception_preprocessing.py`: train = random crop
covering 5-100% of the image with aspect ratio 3/4-4/3 (or pad-and-crop for small images),
bilinear resize, left-right flip, optional colour distortion; eval = central crop, bilinear
resize. Pixels end in [-1, 1]; grayscale images become 3-channel RGB.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _tf():
    """Import TensorFlow with GPUs hidden: JAX owns the accelerators, tf.data runs on the host."""
    from mnv2_jax import quiet

    tf = quiet.import_tensorflow()  # without its C++ start-up banners

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialised (hidden by an earlier call, or by the user)
        pass
    return tf


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


def inception_crop_window(shape, key, settings: Any):
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


def preprocess_train(encoded, key, settings: Any, decode: Callable):
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


def preprocess_eval(encoded, settings: Any, decode: Callable):
    """One evaluation image: TF-Slim's central crop (`eval_crop`), bilinear resize; in [-1, 1]."""
    window_fn = None
    if settings.eval_crop < 1.0:
        window_fn = lambda shape: central_crop_window(shape, settings.eval_crop)  # noqa: E731
    return _to_unit_range(_finish(decode(encoded, window_fn), settings.resolution))
