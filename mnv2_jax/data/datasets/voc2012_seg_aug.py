"""`voc2012_seg_aug`: PASCAL VOC 2012 semantic segmentation with the SBD extra labels (DeepLab's
`train_aug`), as a TFDS dataset built from archives downloaded by hand.

Splits, as TF DeepLab's `data_generator.py` (`_PASCAL_VOC_SEG_INFORMATION`):

* `train_aug` (10,582 images): SBD train + SBD val + VOC 2012 `train`, less every VOC 2012 `val` image;
* `val` (1,449 images): VOC 2012 `ImageSets/Segmentation/val.txt`.

Labels are class indices 0-20 (0 = background) and 255 (VOC's "void" boundary band, ignored). An image
that has a VOC `SegmentationClass` PNG (palette indices, with the 255 band) takes that label; the
others take SBD's `cls/<id>.mat` (`GTcls.Segmentation`, no 255 band). Images come from VOC's
`JPEGImages` (which holds every SBD image too), else SBD's `img/`.

Importing this module registers the name; `mnv2_jax.data.input_pipeline` does that when a config
names the dataset, and says where to put the archives if it is not prepared.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

NAME = "voc2012_seg_aug"
VOC_ARCHIVE = "VOCtrainval_11-May-2012.tar"
SBD_ARCHIVE = "benchmark.tgz"
VOC_ROOT = "VOCdevkit/VOC2012"
SBD_ROOT = "benchmark_RELEASE/dataset"
NUM_CLASSES = 21
IGNORE_LABEL = 255
CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
SPLIT_SIZES = {"train_aug": 10_582, "val": 1_449}


def _read_ids(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip().split()[0] for line in f if line.strip()]


def split_ids(voc_root: str, sbd_root: str) -> dict[str, list[str]]:
    """`{'train_aug': [...], 'val': [...]}`: image ids in a stable (sorted) order."""
    voc_sets = os.path.join(voc_root, "ImageSets", "Segmentation")
    val = _read_ids(os.path.join(voc_sets, "val.txt"))
    train = set(_read_ids(os.path.join(voc_sets, "train.txt")))
    for name in ("train.txt", "val.txt"):
        train.update(_read_ids(os.path.join(sbd_root, name)))
    return {"train_aug": sorted(train - set(val)), "val": sorted(val)}


def read_label(image_id: str, voc_root: str, sbd_root: str) -> np.ndarray:
    """uint8 (h, w, 1) class indices: VOC's palette PNG where there is one, else SBD's .mat."""
    png = os.path.join(voc_root, "SegmentationClass", f"{image_id}.png")
    if os.path.exists(png):
        from PIL import Image

        with Image.open(png) as image:
            if image.mode != "P":
                raise ValueError(f"{png}: expected a palette PNG of class indices, got mode {image.mode!r}")
            label = np.asarray(image, np.uint8)
    else:
        mat = os.path.join(sbd_root, "cls", f"{image_id}.mat")
        if not os.path.exists(mat):
            raise FileNotFoundError(f"{image_id}: neither {png} nor {mat} exists")
        import scipy.io

        label = np.asarray(scipy.io.loadmat(mat)["GTcls"]["Segmentation"][0, 0], np.uint8)
    return label[..., None]


def image_path(image_id: str, voc_root: str, sbd_root: str) -> str:
    for path in (
        os.path.join(voc_root, "JPEGImages", f"{image_id}.jpg"),
        os.path.join(sbd_root, "img", f"{image_id}.jpg"),
    ):
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{image_id}: no JPEG in {voc_root}/JPEGImages or {sbd_root}/img")


class Voc2012SegAug(tfds.core.GeneratorBasedBuilder):
    """PASCAL VOC 2012 segmentation + SBD: `train_aug` (10,582) and `val` (1,449)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "DeepLab's train_aug / val splits; VOC labels where present, else SBD."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Put two archives in the manual directory (`<data_dir>/downloads/manual/`):
      {VOC_ARCHIVE}  (PASCAL VOC 2012 trainval, http://host.robots.ox.ac.uk/pascal/VOC/voc2012/)
      {SBD_ARCHIVE}  (the Semantic Boundaries Dataset, http://home.bharathh.info/pubs/codes/SBD/download.html)
    then run `tfds build mnv2_jax/data/datasets/voc2012_seg_aug.py --data_dir <data_dir>`, or any
    `mnv2 train` whose config names the dataset.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "image/filename": tfds.features.Text(),
                    "segmentation_mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                }
            ),
            metadata=tfds.core.MetadataDict(
                num_classes=NUM_CLASSES, ignore_label=IGNORE_LABEL, class_names=list(CLASS_NAMES)
            ),
            homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        archives = {}
        for name in (VOC_ARCHIVE, SBD_ARCHIVE):
            path = dl_manager.manual_dir / name
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
            archives[name] = os.fspath(dl_manager.extract(path))
        voc_root = os.path.join(archives[VOC_ARCHIVE], VOC_ROOT)
        sbd_root = os.path.join(archives[SBD_ARCHIVE], SBD_ROOT)
        ids = split_ids(voc_root, sbd_root)
        return {
            split: self._generate_examples(split_ids_, voc_root, sbd_root)
            for split, split_ids_ in ids.items()
        }

    def _generate_examples(self, ids: list[str], voc_root: str, sbd_root: str):
        for image_id in ids:
            yield (
                image_id,
                {
                    "image": image_path(image_id, voc_root, sbd_root),
                    "image/filename": f"{image_id}.jpg",
                    "segmentation_mask": read_label(image_id, voc_root, sbd_root),
                },
            )
