"""Figure 6a of the paper: linear bottleneck vs ReLU6 in the bottleneck, at 1.0/224 (2 runs).

    mnv2 sweep launch sweeps/bottleneck_activation.py --tpu NAME --zone ZONE --workdir gs://B/fig6a

Section 3.2 argues that a non-linearity on the low-dimensional bottleneck destroys
information; the paper's Figure 6a shows the linear bottleneck ahead by about one point of
top-1 through training. Full ImageNet recipe (configs/imagenet.py) for both runs; compare
their eval curves (metrics.jsonl / wandb group `bottleneck_activation`).
"""

NAME = "bottleneck_activation"
CONFIG = "configs/imagenet.py"
WANDB_PROJECT = "mnv2_jax-imagenet"
SEEDS = 1


def sweep(add):
    for activation in ("linear", "relu6"):
        add(width=1.0, resolution=224, bottleneck_activation=activation)
