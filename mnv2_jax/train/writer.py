"""Where metrics go: `metrics.jsonl` and `summary.json` in the workdir, and wandb.

Only process 0 writes. wandb never blocks or fails a run: without an API key,
or when its server does not answer within a few seconds, it writes offline
files for `wandb sync`; any wandb error is reported once and logging goes on
to the files alone.
"""

from __future__ import annotations

import json
import math
import os
import sys
import urllib.request
import uuid
from typing import Any

from mnv2_jax import progress

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
WANDB_ID_FILE = "wandb_run_id"


def _clean(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def truncate_metrics(workdir: str, last_step: int) -> None:
    """Drop a partial last line and every line past `last_step` (a resumed run rewrites them)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if record.get("step", 0) <= last_step:
                kept.append(line)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                out.append(json.loads(line))
    return out


def write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_clean)
        f.write("\n")
    os.replace(tmp, path)


def _wandb_mode(requested: str, timeout: float = 10.0) -> str:
    """online only with an API key and a server that answers; else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    has_key = bool(os.environ.get("WANDB_API_KEY"))
    if not has_key:
        netrc = os.path.expanduser("~/.netrc")
        has_key = os.path.exists(netrc) and "api.wandb.ai" in open(netrc).read()
    if not has_key:
        return "offline"
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    try:
        urllib.request.urlopen(base, timeout=timeout)
        return "online"
    except Exception:  # noqa: BLE001 - any failure to reach the server means offline
        return "offline"


class MetricWriter:
    """Appends one JSON object per logged step; mirrors everything to wandb."""

    def __init__(self, workdir: str, config: dict, wandb_config: Any, enabled: bool = True):
        self.workdir = workdir
        self.enabled = enabled
        self.run = None
        if not enabled:
            return
        self.file = open(os.path.join(workdir, METRICS_FILE), "a")
        self._init_wandb(config, wandb_config)

    def _init_wandb(self, config: dict, wandb_config: Any) -> None:
        mode = _wandb_mode(wandb_config.mode)
        if mode == "disabled":
            return
        try:
            import wandb

            id_path = os.path.join(self.workdir, WANDB_ID_FILE)
            run_id = open(id_path).read().strip() if os.path.exists(id_path) else uuid.uuid4().hex[:12]
            with open(id_path, "w") as f:
                f.write(run_id)
            self.run = wandb.init(
                project=wandb_config.project,
                entity=wandb_config.entity,
                group=wandb_config.group,
                name=wandb_config.name or os.path.basename(os.path.abspath(self.workdir)),
                tags=list(wandb_config.tags or ()),
                config=config,
                id=run_id,
                resume="allow",
                dir=self.workdir,
                mode=mode,
                settings=wandb.Settings(init_timeout=30, silent=True),
            )
        except Exception as e:  # noqa: BLE001 - logging must never stop training
            print(f"wandb unavailable ({type(e).__name__}: {e}); logging to files only", file=sys.stderr)
            self.run = None

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in values.items()}}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.run is not None:
            try:
                self.run.log({k: v for k, v in record.items() if k != "step"}, step=step)
            except Exception as e:  # noqa: BLE001
                print(f"wandb log failed ({e}); continuing with files only", file=sys.stderr)
                self.run = None

    def summary(self, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        write_json(os.path.join(self.workdir, SUMMARY_FILE), values)
        if self.run is not None:
            try:
                self.run.summary.update({k: _clean(v) for k, v in values.items()})
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.run is not None:
            try:
                self.run.finish()
            except Exception:  # noqa: BLE001
                pass


class Progress:
    """The console side of a training run (never its files): a line around the compile, one
    line per log step (step, loss, images/s, time left) and, on a terminal, a live bar.

    Rates and time left are measured from the end of the compile (`start`), so the first
    ones are those of steady training; durations do not wrap at 24 hours.
    """

    def __init__(self, total_steps: int, enabled: bool = True):
        self.total = total_steps
        self.enabled = enabled
        self.clock = progress.RateClock(total_steps)
        self.bar: Any = None

    def compiling(self, what: str = "the train step"):
        """Context manager: 'compiling the train step ...', then how long it took."""
        return progress.phase(f"compiling {what}", enabled=self.enabled)

    def start(self, step: int) -> None:
        """Training proper starts at `step` (the compile is done): start the clock and the bar."""
        self.clock.start(step)
        if self.enabled and self.bar is None:
            self.bar = progress.bar(self.total, "train", unit="step", initial=step)

    def advance(self, step: int) -> None:
        """Move the bar to `step` (cheap: call it every step)."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def __call__(self, step: int, loss: float, images_per_sec: float, steps_per_sec: float) -> None:
        if not self.enabled:
            return
        _, remaining = self.clock.update(step)
        if self.bar is not None:
            self.advance(step)
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_sec:.1f}", refresh=False)
        progress.say(
            f"step {step:>7}/{self.total}  loss {loss:.4f}  {images_per_sec:8.1f} img/s  "
            f"ETA {progress.format_duration(remaining)}"
        )

    def say(self, message: str) -> None:
        """A line of the run's own (eval results, resuming, ...) above the bar."""
        if self.enabled:
            progress.say(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
