"""Figure 5 of the paper: accuracy against multiply-adds over width x resolution (22 runs).

    mnv2 sweep list sweeps/width_resolution.py
    mnv2 sweep launch sweeps/width_resolution.py --tpu v3-8-a,v3-8-b --zone europe-west4-a \
        --workdir gs://BUCKET/sweeps/width_resolution --data-dir gs://BUCKET/tfds

The grid of the published TF-Slim checkpoints: widths 0.35, 0.5, 0.75, 1.0 at resolutions
96, 128, 160, 192, 224, plus 1.3 and 1.4 at 224 -- from 11M to 582M multiply-adds.
Each run is the full ImageNet recipe of configs/imagenet.py (TF-Slim, 420 epochs), so the
sweep costs about 9x a 1.0/224 run (the MAdds summed over the grid, `mnv2 sweep list`);
see configs/imagenet.py for the per-run time estimate.

Expected top-1 (the published checkpoints, EMA weights, 0.875 central crop):

    width \\ res   96    128   160   192   224
    0.35          45.5  50.8  55.7  58.2  60.3
    0.5           51.2  57.7  61.0  63.9  65.4
    0.75          58.8  63.2  66.4  68.7  69.8
    1.0           60.3  65.3  68.8  70.7  71.8
    1.3 / 1.4                             74.4 / 75.0
"""

NAME = "width_resolution"
CONFIG = "configs/imagenet.py"
WANDB_PROJECT = "mnv2_jax-imagenet"
SEEDS = 1

WIDTHS = (0.35, 0.5, 0.75, 1.0)
RESOLUTIONS = (96, 128, 160, 192, 224)


def sweep(add):
    for width in WIDTHS:
        for resolution in RESOLUTIONS:
            add(width=width, resolution=resolution)
    for width in (1.3, 1.4):
        add(width=width, resolution=224)
