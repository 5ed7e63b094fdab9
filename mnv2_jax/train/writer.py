"""Where metrics go: `metrics.jsonl` and `summary.json` in the workdir, and wandb.

Only process 0 writes. wandb never blocks or fails a run: without an API key,
or when its server does not answer within a few seconds, it writes offline
files for `wandb sync`; any wandb error is reported once and logging goes on
to the files alone.
"""

from __future__ import annotations

import math
import os
import sys
import time
import uuid
from typing import Any

from mnv2_jax import workdir as workdir_lib
from mnv2_jax.wandb_mode import decide


def local_wandb_dir(workdir: str) -> str:
    """Where wandb writes its files: the workdir when it is local, else WANDB_DIR or a local cache
    (wandb cannot write to gs://)."""
    if workdir_lib.is_local(workdir):
        return workdir
    return os.environ.get("WANDB_DIR") or os.path.expanduser("~/.cache/mnv2_jax/wandb")


def _run_name(workdir: str) -> str:
    if workdir_lib.is_local(workdir):
        return os.path.basename(os.path.abspath(workdir))
    return workdir_lib.path(workdir).name


class MetricWriter:
    """Appends one JSON object per logged step; mirrors everything to wandb."""

    def __init__(self, workdir: str, config: dict, wandb_config: Any, enabled: bool = True):
        self.workdir = workdir
        self.enabled = enabled
        self.run = None
        if not enabled:
            return
        self.log = workdir_lib.MetricsLog(workdir)
        self._init_wandb(config, wandb_config)

    def _init_wandb(self, config: dict, wandb_config: Any) -> None:
        mode, why = decide(wandb_config.mode)
        if mode == "disabled":
            return
        try:
            import wandb

            run_id = workdir_lib.wandb_run_id(self.workdir, uuid.uuid4().hex[:12])
            self.run = wandb.init(
                project=wandb_config.project,
                entity=wandb_config.entity,
                group=wandb_config.group,
                name=wandb_config.name or _run_name(self.workdir),
                tags=list(wandb_config.tags or ()),
                config=config,
                id=run_id,
                resume="allow",
                dir=local_wandb_dir(self.workdir),
                mode=mode,
                settings=wandb.Settings(init_timeout=30, silent=True),
            )
        except Exception as e:  # noqa: BLE001 - logging must never stop training
            print(f"wandb unavailable ({type(e).__name__}: {e}); logging to files only", file=sys.stderr)
            self.run = None
            return
        if mode == "offline":
            where = self.run.settings.sync_dir
            print(
                f"wandb offline: {why}; run files in {where}; upload later with: wandb sync {where}",
                flush=True,
            )

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = self.log.write(step, values)
        if self.run is not None:
            try:
                self.run.log({k: v for k, v in record.items() if k != "step"}, step=step)
            except Exception as e:  # noqa: BLE001
                print(f"wandb log failed ({e}); continuing with files only", file=sys.stderr)
                self.run = None

    def summary(self, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        workdir_lib.write_summary(self.workdir, values)
        if self.run is not None:
            try:
                self.run.summary.update({k: workdir_lib.clean(v) for k, v in values.items()})
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        if not self.enabled:
            return
        self.log.close()
        if self.run is not None:
            try:
                self.run.finish()
            except Exception:  # noqa: BLE001
                pass


class Progress:
    """One console line per log step: step, loss, images/s, ETA."""

    def __init__(self, total_steps: int, enabled: bool = True):
        self.total = total_steps
        self.enabled = enabled
        self.start = time.time()

    def __call__(self, step: int, loss: float, images_per_sec: float, steps_per_sec: float) -> None:
        if not self.enabled:
            return
        remaining = (self.total - step) / steps_per_sec if steps_per_sec > 0 else float("nan")
        eta = time.strftime("%H:%M:%S", time.gmtime(remaining)) if math.isfinite(remaining) else "?"
        print(
            f"step {step:>7}/{self.total}  loss {loss:.4f}  {images_per_sec:8.1f} img/s  ETA {eta}",
            flush=True,
        )
