"""mnv2_jax: MobileNetV2 (Sandler et al., 2018) in JAX/Flax for scaling sweeps.

Light on import: heavy modules (JAX, TensorFlow, wandb) load where they are used.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_run", "__version__"]


def load_run(workdir: str, ema: bool = True, step: int | None = None):
    """Return `(module, variables, config)` of the run in `workdir`.

    `variables` are the averaged (EMA) weights and statistics unless
    `ema=False`; `step` picks a checkpoint (default: the latest).
    """
    from mnv2_jax.runs import load_run as _load_run

    return _load_run(workdir, ema=ema, step=step)
