"""Checkpoints (orbax) and reading runs back.

A workdir's `checkpoints/` holds orbax steps, written atomically (orbax
writes to a temporary directory and renames it; on GCS it marks a finished
step with a commit file instead), so a kill at any moment leaves the previous
checkpoint loadable. Every process takes part in saves and restores; orbax
coordinates them. Workdirs may be local or gs:// (`mnv2_jax.storage`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from mnv2_jax import storage


class Checkpointer:
    """Save and restore the whole train state under `workdir/checkpoints`."""

    def __init__(self, workdir: str, keep: int = 3):
        base = workdir if storage.is_remote(workdir) else os.path.abspath(workdir)
        self.directory = storage.join(base, "checkpoints")
        self.manager = ocp.CheckpointManager(
            storage.path(self.directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, force: bool = False) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, abstract_state: Any, step: int | None = None) -> Any | None:
        """The state at `step` (default: latest), or None when there is no checkpoint.

        Arrays go where `abstract_state`'s leaves say (their shardings); leaves without one (from
        `jax.eval_shape`) go to this process's first device, so that a checkpoint written by
        another topology (a TPU slice, several processes) loads on a laptop.
        """
        step = self.manager.latest_step() if step is None else step
        if step is None:
            return None
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

        def placed(leaf: Any) -> Any:
            if getattr(leaf, "sharding", None) is not None:
                return leaf
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device)

        target = jax.tree.map(placed, abstract_state)
        return self.manager.restore(step, args=ocp.args.StandardRestore(target))

    def reached_preemption(self, step: int) -> bool:
        """True on every host once a preemption notice arrived (multi-host agreement)."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to `workdir/config.json`."""
    text = storage.read_text(storage.join(workdir, "config.json"))
    if text is None:
        raise ValueError(f"{workdir}: not a run directory (no config.json)")
    stored = json.loads(text)
    stored.pop("provenance", None)
    return ml_collections.ConfigDict(_tuples(stored))


def _tuples(d: dict) -> dict:
    """JSON turns tuples into lists; the config's tuple-valued keys want them back."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out[key] = _tuples(value)
        elif isinstance(value, list):
            out[key] = tuple(value)
        else:
            out[key] = value
    return out


def load_run(workdir: str, ema: bool = True, step: int | None = None):
    """`(module, variables, config)` of a run: the latest checkpoint, EMA weights by default.

    The module is built for inference on any backend; `variables` is
    `{'params': ..., 'batch_stats': ...}`.
    """
    from mnv2_jax import config as config_lib
    from mnv2_jax.train import optim
    from mnv2_jax.train import step as steps

    config = read_config(workdir)
    num_classes = config.num_classes
    module = config_lib.model_from_config(config, num_classes)
    tx = optim.create_optimizer(config, steps_per_epoch=1)
    abstract = jax.eval_shape(lambda: steps.create_train_state(module, tx, config.resolution, 0))
    checkpointer = Checkpointer(workdir)
    state = checkpointer.restore(abstract, step)
    checkpointer.close()
    if state is None:
        raise ValueError(f"{workdir}: no checkpoint to load")
    return module, steps.eval_variables(state, ema=ema), config
