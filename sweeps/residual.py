"""Figure 6b of the paper: where the shortcut goes, at 1.0/224 (3 runs).

    mnv2 sweep launch sweeps/residual.py --tpu NAME --zone ZONE --workdir gs://BUCKET/sweeps/fig6b

* bottleneck (the paper): shortcuts between the thin bottleneck tensors;
* expansion: shortcuts between the expanded tensors instead (see mnv2_jax/spec.py);
* none: no residual connections.
The paper's Figure 6b shows the bottleneck shortcut ahead of the expansion one, and both
ahead of no residual. Full ImageNet recipe (configs/imagenet.py) for every run.
"""

NAME = "residual"
CONFIG = "configs/imagenet.py"
WANDB_PROJECT = "mnv2_jax-imagenet"
SEEDS = 1


def sweep(add):
    for residual in ("bottleneck", "expansion", "none"):
        add(width=1.0, resolution=224, residual=residual)
