"""Checkpoints: orbax train states under `workdir/checkpoints`, and the flat variables file of
imported weights (`variables.msgpack`).

orbax writes each step to a temporary directory and renames it (on GCS it writes the step in place
and marks it finished with a commit file), so a kill at any moment leaves the previous checkpoint
loadable. Every process takes part in saves and restores; orbax coordinates
them, and its preemption check (`reached_preemption`) makes every host agree on the step at which
a SIGTERM (preemption) stops the run.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mnv2_jax import workdir as workdir_lib

VARIABLES = "variables.msgpack"


class Checkpointer:
    """Save and restore the whole train state under `workdir/checkpoints`."""

    def __init__(self, workdir: str, keep: int = 3):
        path = workdir_lib.path(workdir, workdir_lib.CHECKPOINTS)
        self.directory = path.absolute() if workdir_lib.is_local(path) else path
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, force: bool = False) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, abstract_state: Any = None, step: int | None = None) -> Any | None:
        """The state at `step` (default: latest), or None when there is no checkpoint. Without
        `abstract_state`, the saved tree comes back as nested dicts of arrays.

        Arrays go where `abstract_state`'s leaves say (their shardings); leaves without one (from
        `jax.eval_shape`, or no target at all) go to this process's first device, so that a
        checkpoint written on another topology (a TPU slice, several processes) loads here.
        """
        step = self.manager.latest_step() if step is None else step
        if step is None:
            return None
        if abstract_state is None:
            abstract_state = self.manager.item_metadata(step)  # shapes and dtypes as saved
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

        def placed(leaf: Any) -> Any:
            if isinstance(getattr(leaf, "sharding", None), jax.sharding.Sharding):
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


def has_variables_file(directory: str) -> bool:
    return workdir_lib.path(directory, VARIABLES).exists()


def save_variables(directory: str, variables: dict) -> None:
    """`{'params', 'batch_stats'}` as one flat msgpack file (flax.serialization): the format of
    imported weights, which have no optimizer state or step."""
    from flax import serialization

    state = {k: jax.tree.map(np.asarray, variables[k]) for k in ("params", "batch_stats")}
    path = workdir_lib.path(directory, VARIABLES)
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_bytes(serialization.to_bytes(state))
    os.replace(tmp, path)


def load_variables(directory: str, ema: bool = True) -> dict:
    """`{'params', 'batch_stats'}` (NumPy arrays) of an imported-weights directory, or of a run
    folder's latest checkpoint (the averaged weights unless `ema=False`)."""
    from flax import serialization

    if has_variables_file(directory):
        restored = serialization.msgpack_restore(workdir_lib.path(directory, VARIABLES).read_bytes())
        return {"params": restored["params"], "batch_stats": restored["batch_stats"]}
    checkpointer = Checkpointer(directory)
    try:
        state = checkpointer.restore()
    finally:
        checkpointer.close()
    if state is None:
        raise ValueError(f"{directory}: no checkpoint and no {VARIABLES}: nothing to load")
    prefix = "ema_" if ema else ""
    return {"params": state[f"{prefix}params"], "batch_stats": state[f"{prefix}batch_stats"]}
