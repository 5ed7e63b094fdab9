"""mnv2_jax: MobileNetV2 (Sandler et al., 2018) in JAX/Flax for scaling sweeps.

Light on import: heavy modules (JAX, TensorFlow, wandb) load where they are used.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_run", "__version__"]


def load_run(workdir: str):
    """Return `(module, variables, config)` of the run in `workdir` (its latest checkpoint)."""
    from mnv2_jax.checkpointing import load_run as _load_run

    return _load_run(workdir)
