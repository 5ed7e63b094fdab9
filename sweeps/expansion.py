"""Expansion ratio t of the inverted residual blocks: 2, 4, 6 (the paper), 8, 10 (15 runs).

    mnv2 sweep list sweeps/expansion.py
    mnv2 sweep launch sweeps/expansion.py --tpu NAME --zone ZONE --workdir gs://BUCKET/sweeps/expansion

The paper fixes t = 6 and remarks that 5-10 give "nearly identical" results; this sweep
measures the whole curve at 224 pixels for widths 0.35, 0.5 and 1.0 (small ratios starve
the depthwise convolution of channels, large ones cost MAdds linearly in t). Runs use the
full ImageNet recipe of configs/imagenet.py; the t=6 points equal the width_resolution
sweep's 224 runs (same names, so a shared workdir root trains them once).
Expected: accuracy rising steeply from t=2 to t=4-6 and flattening after 6.
"""

NAME = "expansion"
CONFIG = "configs/imagenet.py"
WANDB_PROJECT = "mnv2_jax-imagenet"
SEEDS = 1


def sweep(add):
    for width in (0.35, 0.5, 1.0):
        for expansion in (2.0, 4.0, 6.0, 8.0, 10.0):
            add(width=width, expansion=expansion)
