"""Published results to set beside a reproduction: the 22 TF-Slim MobileNetV2 ImageNet checkpoints.

Source: the table "Mobilenet V2 Imagenet Checkpoints" in the TF-Slim MobileNet README,
https://github.com/tensorflow/models/blob/master/research/slim/nets/mobilenet/README.md
(the checkpoints the paper's authors released; Keras' `keras.applications.MobileNetV2`
docstring reproduces the same table). These are the width x resolution grid of the paper's
Figure 5; the paper's Table 4 prints slightly different numbers for two of them (1.0/224:
72.0% top-1, 300M MAdds, 3.4M parameters; 1.4/224: 74.7%, 585M, 6.9M).

Units as published: multiply-adds in millions (whole millions, rounded down: 1.0/224 is
300.77M by `mnv2 info`), parameters in millions (two decimals, batch norm not counted), top-1
and top-5 in percent on the ImageNet (ILSVRC 2012) validation set, 224-pixel models
evaluated at their own resolution. `tests/test_published.py` checks every row's MAdds and
parameters against this package's accounting.
"""

from __future__ import annotations

import dataclasses

SOURCE = "TF-Slim MobileNetV2 checkpoints (tensorflow/models research/slim/nets/mobilenet/README.md)"
SOURCE_URL = "https://github.com/tensorflow/models/blob/master/research/slim/nets/mobilenet/README.md"
DATASET = "imagenet2012"
# The architecture the published checkpoints use; only runs with these settings are compared.
ARCHITECTURE = {"expansion": 6.0, "bottleneck_activation": "linear", "residual": "bottleneck"}


@dataclasses.dataclass(frozen=True)
class Published:
    width: float
    resolution: int
    madds_millions: int
    params_millions: float
    top1: float  # percent
    top5: float  # percent


# width, resolution, MACs (M), parameters (M), top-1 (%), top-5 (%): the README's rows, in its order.
TF_SLIM_MOBILENET_V2: tuple[Published, ...] = tuple(
    Published(*row)
    for row in (
        (1.4, 224, 582, 6.06, 75.0, 92.5),
        (1.3, 224, 509, 5.34, 74.4, 92.1),
        (1.0, 224, 300, 3.47, 71.8, 91.0),
        (1.0, 192, 221, 3.47, 70.7, 90.1),
        (1.0, 160, 154, 3.47, 68.8, 89.0),
        (1.0, 128, 99, 3.47, 65.3, 86.9),
        (1.0, 96, 56, 3.47, 60.3, 83.2),
        (0.75, 224, 209, 2.61, 69.8, 89.6),
        (0.75, 192, 153, 2.61, 68.7, 88.9),
        (0.75, 160, 107, 2.61, 66.4, 87.3),
        (0.75, 128, 69, 2.61, 63.2, 85.3),
        (0.75, 96, 39, 2.61, 58.8, 81.6),
        (0.5, 224, 97, 1.95, 65.4, 86.4),
        (0.5, 192, 71, 1.95, 63.9, 85.4),
        (0.5, 160, 50, 1.95, 61.0, 83.2),
        (0.5, 128, 32, 1.95, 57.7, 80.8),
        (0.5, 96, 18, 1.95, 51.2, 75.8),
        (0.35, 224, 59, 1.66, 60.3, 82.9),
        (0.35, 192, 43, 1.66, 58.2, 81.2),
        (0.35, 160, 30, 1.66, 55.7, 79.1),
        (0.35, 128, 20, 1.66, 50.8, 75.0),
        (0.35, 96, 11, 1.66, 45.5, 70.4),
    )
)

# The names `--reference` accepts.
REFERENCES = {"paper": TF_SLIM_MOBILENET_V2}


def reference(name: str) -> tuple[Published, ...]:
    """The published points called `name` (`--reference NAME`)."""
    if name not in REFERENCES:
        raise ValueError(f"--reference: unknown reference {name!r}; choose from {', '.join(REFERENCES)}")
    return REFERENCES[name]


def lookup(config: dict, points: tuple[Published, ...] = TF_SLIM_MOBILENET_V2) -> Published | None:
    """The published checkpoint with a run's width and resolution, if the run trained on ImageNet
    with the published architecture (expansion 6, linear bottleneck, bottleneck residual, full
    depth); else None."""
    if str(config.get("dataset", DATASET)).split(":")[0] != DATASET:
        return None  # another dataset: an ImageNet number beside it would mislead
    for key, value in ARCHITECTURE.items():
        if config.get(key, value) != value:
            return None
    if config.get("max_repeats") is not None:
        return None
    for point in points:
        if config.get("width") == point.width and config.get("resolution") == point.resolution:
            return point
    return None
