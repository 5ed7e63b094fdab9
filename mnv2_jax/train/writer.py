"""Where metrics go: `metrics.jsonl` and `summary.json` in the workdir, and wandb.

Only process 0 writes. wandb never blocks or fails a run: without an API key,
or when its server does not answer within a few seconds, it writes offline
files for `wandb sync`; any wandb error is reported once and logging goes on
to the files alone.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

from mnv2_jax import storage

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
    path = storage.join(workdir, METRICS_FILE)
    text = storage.read_text(path)
    if text is None:
        return
    kept = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if record.get("step", 0) <= last_step:
            kept.append(line)
    storage.write_text(path, "".join(kept))


def read_metrics(workdir: str) -> list[dict]:
    text = storage.read_text(storage.join(workdir, METRICS_FILE)) or ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def write_json(path: str, obj: Any) -> None:
    """Replace the JSON file at `path` atomically (local or gs://)."""
    storage.write_text(path, json.dumps(obj, indent=2, default=_clean) + "\n")


def wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


def wandb_key_source(base_url: str | None = None) -> str | None:
    """Where an API key for `base_url` comes from (`WANDB_API_KEY` or a netrc file), or None.

    `wandb login` stores the key in ~/.netrc under the server's host name (api.wandb.ai, or the
    host of a self-hosted server), so only an entry for WANDB_BASE_URL's host counts.
    """
    if os.environ.get("WANDB_API_KEY"):
        return "WANDB_API_KEY"
    host = urllib.parse.urlsplit(base_url or wandb_base_url()).hostname
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        entry = netrc.netrc(path).authenticators(host) if host and os.path.exists(path) else None
    except (OSError, netrc.NetrcParseError):
        return None
    return path if entry and entry[2] else None


def _wandb_mode(requested: str, timeout: float = 5.0) -> tuple[str, str]:
    """`(mode, why)`: `auto` is online only with an API key and a server that answers, else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], "WANDB_MODE is set"
    if requested != "auto":
        return requested, f"config wandb.mode={requested!r}"
    base = wandb_base_url()
    if wandb_key_source(base) is None:
        host = urllib.parse.urlsplit(base).hostname
        return "offline", f"no API key (WANDB_API_KEY, or a ~/.netrc entry for {host} from `wandb login`)"
    try:
        urllib.request.urlopen(base, timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # the server answered (with an error status): it is there
    except Exception as e:  # noqa: BLE001 - any failure to reach the server means offline
        reason = getattr(e, "reason", e)
        return "offline", f"{base} does not answer ({type(reason).__name__}: {reason})"
    return "online", f"{base} answers"


def local_wandb_dir(workdir: str) -> str:
    """Where wandb writes its files: the workdir when it is local, else WANDB_DIR or a local cache
    (wandb cannot write to gs://)."""
    if not storage.is_remote(workdir):
        return workdir
    return os.environ.get("WANDB_DIR") or os.path.expanduser("~/.cache/mnv2_jax/wandb")


class MetricWriter:
    """Appends one JSON object per logged step; mirrors everything to wandb.

    A GCS object cannot be appended to: on gs:// the writer keeps the file's text and uploads it
    whole at every write (a few hundred bytes per logged step), so the object in the bucket always
    holds every line written so far.
    """

    def __init__(self, workdir: str, config: dict, wandb_config: Any, enabled: bool = True):
        self.workdir = workdir
        self.enabled = enabled
        self.run = None
        if not enabled:
            return
        self.path = storage.join(workdir, METRICS_FILE)
        self.file = None if storage.is_remote(workdir) else open(self.path, "a")
        self.text = (storage.read_text(self.path) or "") if self.file is None else ""
        self._init_wandb(config, wandb_config)

    def _init_wandb(self, config: dict, wandb_config: Any) -> None:
        mode, why = _wandb_mode(wandb_config.mode)
        if mode == "disabled":
            return
        try:
            import wandb

            id_path = storage.join(self.workdir, WANDB_ID_FILE)
            run_id = (storage.read_text(id_path) or "").strip() or uuid.uuid4().hex[:12]
            storage.write_text(id_path, run_id)
            self.run = wandb.init(
                project=wandb_config.project,
                entity=wandb_config.entity,
                group=wandb_config.group,
                name=wandb_config.name or storage.path(self.workdir).name,
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
        record = {"step": step, **{k: _clean(v) for k, v in values.items()}}
        line = json.dumps(record) + "\n"
        if self.file is not None:
            self.file.write(line)
            self.file.flush()
        else:
            self.text += line
            storage.write_text(self.path, self.text)
        if self.run is not None:
            try:
                self.run.log({k: v for k, v in record.items() if k != "step"}, step=step)
            except Exception as e:  # noqa: BLE001
                print(f"wandb log failed ({e}); continuing with files only", file=sys.stderr)
                self.run = None

    def summary(self, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        write_json(storage.join(self.workdir, SUMMARY_FILE), values)
        if self.run is not None:
            try:
                self.run.summary.update({k: _clean(v) for k, v in values.items()})
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        if not self.enabled:
            return
        if self.file is not None:
            self.file.close()
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
