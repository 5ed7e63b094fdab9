"""TFDS builders for data that ships inside Python packages, so that runs and tests need no network.

Kept empty on purpose: importing a builder module imports TensorFlow Datasets, which is heavy.
Import the module itself to register its name with TFDS, e.g.::

    from mnv2_jax.data.datasets import mnist_offline

    mnist_offline.ensure_prepared(data_dir)
    tfds.builder("mnist_offline", data_dir=data_dir)

`mnv2_jax.data.input_pipeline` does this for you whenever a config names one of these datasets.
"""

from __future__ import annotations

# Dataset names provided here, mapped to the module that registers each one.
LOCAL_DATASETS: dict[str, str] = {
    "mnist_offline": "mnv2_jax.data.datasets.mnist_offline",
    "mnist_detect_offline": "mnv2_jax.data.datasets.mnist_detect_offline",
    "mnist_seg_offline": "mnv2_jax.data.datasets.mnist_seg_offline",
}
# Builders of datasets downloaded by hand, registered with TFDS when a config names them.
MANUAL_DATASETS: dict[str, str] = {"voc2012_seg_aug": "mnv2_jax.data.datasets.voc2012_seg_aug"}
