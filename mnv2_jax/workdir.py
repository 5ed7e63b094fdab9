"""The run folder: the files a run, a sweep and an import write, and the one reader of each.

A run folder (`mnv2 train --workdir DIR`) holds:

* `config.json`: the resolved config with its provenance, written once at the start;
* `metrics.jsonl`: one JSON object per logged step (lines with the same step belong together),
  appended as the run goes and cut back to the restored step when a run resumes;
* `summary.json`: the final values (eval metrics, `madds`, `params`, the swept keys,
  `complete: true`), written at the end;
* `sweep.json`: which sweep and point the run belongs to (written by the sweep runners);
* `train.log`: the console output of a run that a sweep runner started;
* `wandb_run_id`: the W&B run id, so that a resumed run continues the same W&B run;
* `checkpoints/`: orbax checkpoints (`mnv2_jax.train.checkpoint`).

Every writer and reader of these files is in this module, so their format lives in one place.
Paths go through `etils.epath`, so a run folder may be local or on a bucket (`gs://...`).
It imports only the standard library and etils.
"""

from __future__ import annotations

import functools
import json
import math
import os
import uuid
from collections.abc import Iterable
from typing import Any

from etils import epath

CONFIG = "config.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
SWEEP = "sweep.json"
LOG = "train.log"
WANDB_ID = "wandb_run_id"
CHECKPOINTS = "checkpoints"

# The summary key that marks a finished run.
COMPLETE_KEY = "complete"
# Files or folders that mark a run folder (a sweep writes sweep.json before training starts).
RUN_MARKERS = (SUMMARY, METRICS, CONFIG, SWEEP, CHECKPOINTS, LOG)

PathLike = str | os.PathLike


def path(workdir: PathLike, *parts: str) -> epath.Path:
    """`workdir/parts...` as an `epath.Path` (local or `gs://`)."""
    if not is_local(workdir):
        _fresh_listings()
    return epath.Path(workdir).joinpath(*parts)


@functools.cache
def _fresh_listings() -> None:
    """gcsfs keeps directory listings for the life of a process by default; a run folder in a
    bucket changes under its readers (another process writes its checkpoints and metrics), and a
    cached listing would hide the latest checkpoint. Listings are asked anew each time."""
    import fsspec.config

    for protocol in ("gs", "gcs"):
        fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


def is_local(p: PathLike) -> bool:
    return "://" not in os.fspath(p)


def ensure_writable(directory: PathLike, what: str = "--workdir", tag: str = "") -> None:
    """Create `directory` if needed and write and delete a small file there; a ValueError naming
    `what` and the path when that fails (a missing bucket, no permission, a file in the way)."""
    probe = path(directory, f".write-test{tag}-{uuid.uuid4().hex[:8]}")
    try:
        path(directory).mkdir(parents=True, exist_ok=True)
        write_text(probe, "mnv2_jax write test\n")
        probe.unlink(missing_ok=True)
    except Exception as e:  # noqa: BLE001 - whatever the storage says, name the path and stop
        raise ValueError(f"{what} {directory}: cannot write there ({type(e).__name__}: {e})") from None


def clean(value: Any) -> Any:
    """A JSON-ready scalar: array scalars become Python numbers; NaN and inf become strings."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_text(p: PathLike, text: str) -> None:
    """Write `p` so that a reader never sees a partial file (a temporary file renamed locally;
    object stores replace an object whole)."""
    p = path(p)
    if not is_local(p):
        p.write_text(text)
        return
    tmp = p.parent / (p.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, p)


def write_json(p: PathLike, obj: Any) -> None:
    write_text(p, json.dumps(obj, indent=2, default=clean) + "\n")


def read_json(p: PathLike) -> Any | None:
    """The JSON in `p`, or None when there is no such file."""
    p = path(p)
    if not p.exists():
        return None
    return json.loads(p.read_text())


# config.json


def write_config(workdir: PathLike, config: dict[str, Any]) -> None:
    write_json(path(workdir, CONFIG), config)


def read_config(workdir: PathLike) -> dict[str, Any] | None:
    """The stored config (with its `provenance`), or None when `workdir` has none."""
    return read_json(path(workdir, CONFIG))


# metrics.jsonl


def _complete_lines(text: str) -> Iterable[str]:
    """Lines ending in a newline: a run killed mid-write leaves a partial last line."""
    lines = text.split("\n")
    return lines[:-1]  # the part after the last newline is empty or partial


def read_metrics(workdir: PathLike) -> list[dict[str, Any]]:
    """Every complete record of `metrics.jsonl`, in order ([] when there is none)."""
    p = path(workdir, METRICS)
    if not p.exists():
        return []
    out = []
    for line in _complete_lines(p.read_text()):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def truncate_metrics(workdir: PathLike, last_step: int) -> None:
    """Keep the records up to `last_step` (a resumed run writes the later ones again)."""
    p = path(workdir, METRICS)
    if not p.exists():
        return
    kept = [r for r in read_metrics(workdir) if r.get("step", 0) <= last_step]
    write_text(p, "".join(json.dumps(r) + "\n" for r in kept))


class MetricsLog:
    """Appends one JSON object per logged step to `metrics.jsonl`.

    Locally each record is appended and flushed. An object store cannot append, so there the
    records are kept and the whole file is rewritten at each `flush()` (the loop flushes at
    every log step; the file is small: one line per logged step).
    """

    def __init__(self, workdir: PathLike):
        self._path = path(workdir, METRICS)
        self._local = is_local(self._path)
        if self._local:
            self._file = open(self._path, "a")  # noqa: SIM115 - kept open for the run
        else:
            self._records = [json.dumps(r) + "\n" for r in read_metrics(workdir)]  # lines, as written

    def write(self, step: int, values: dict[str, Any]) -> dict[str, Any]:
        record = {"step": step, **{k: clean(v) for k, v in values.items()}}
        line = json.dumps(record) + "\n"
        if self._local:
            self._file.write(line)
            self._file.flush()
        else:
            self._records.append(line)
            self._path.write_text("".join(self._records))
        return record

    def close(self) -> None:
        if self._local:
            self._file.close()


# summary.json


def write_summary(workdir: PathLike, values: dict[str, Any]) -> None:
    write_json(path(workdir, SUMMARY), values)


def read_summary(workdir: PathLike) -> dict[str, Any] | None:
    """The run's summary, or None when it has none (not finished) or it cannot be read."""
    try:
        return read_json(path(workdir, SUMMARY))
    except (OSError, ValueError):
        return None


def is_complete(workdir: PathLike) -> bool:
    summary = read_summary(workdir)
    return bool(summary and summary.get(COMPLETE_KEY))


# sweep.json and the sweep manifest


def sweep_record(
    *,
    sweep: str | None,
    run: str,
    sweep_file: str | None,
    config: str,
    fixed: dict[str, Any],
    overrides: dict[str, Any],
    global_overrides: dict[str, Any],
    swept_keys: list[str],
    project: str | None,
    wandb_run_id: str | None = None,
) -> dict[str, Any]:
    """What `sweep.json` holds: the sweep and point a run belongs to (every runner writes this)."""
    return {
        "sweep": sweep,
        "run": run,
        "sweep_file": sweep_file,
        "config": config,
        "fixed": fixed,
        "overrides": overrides,
        "global_overrides": global_overrides,
        "swept_keys": swept_keys,
        "project": project,
        "wandb_run_id": wandb_run_id,
    }


MANIFEST_SUFFIX = ".sweep.json"


def sweep_manifest(
    *, sweep: str, sweep_file: str, config: str, project: str | None, swept_keys: list[str], runs: list[str]
) -> dict[str, Any]:
    """What `ROOT/<sweep>.sweep.json` holds: every run the sweep has (its folder `ROOT/<run>`)."""
    return {
        "sweep": sweep,
        "sweep_file": sweep_file,
        "config": config,
        "project": project,
        "swept_keys": swept_keys,
        "runs": runs,
    }


def write_sweep_manifest(root: PathLike, manifest: dict[str, Any]) -> None:
    path(root).mkdir(parents=True, exist_ok=True)
    write_json(path(root, manifest["sweep"] + MANIFEST_SUFFIX), manifest)


def read_sweep_manifests(root: PathLike) -> list[dict[str, Any]]:
    """The manifests of the sweeps that ran (or were launched) under `root`."""
    root_path = path(root)
    if not root_path.is_dir():
        return []
    out = []
    for child in sorted(root_path.iterdir(), key=lambda c: c.name):
        if child.name.endswith(MANIFEST_SUFFIX) and child.name != SWEEP:
            try:
                out.append(json.loads(child.read_text()))
            except (OSError, ValueError):
                continue
    return out


def write_sweep_record(workdir: PathLike, record: dict[str, Any]) -> None:
    write_json(path(workdir, SWEEP), record)


def read_sweep_record(workdir: PathLike) -> dict[str, Any] | None:
    try:
        return read_json(path(workdir, SWEEP))
    except (OSError, ValueError):
        return None


# wandb_run_id


def wandb_run_id(workdir: PathLike, new_id: str) -> str:
    """The W&B run id stored in `workdir`; `new_id` is stored and returned when there is none."""
    p = path(workdir, WANDB_ID)
    if p.exists():
        return p.read_text().strip()
    write_text(p, new_id)
    return new_id


# Finding run folders.


def is_run_dir(p: PathLike) -> bool:
    p = path(p)
    return any((p / marker).exists() for marker in RUN_MARKERS)


def find_run_dirs(root: PathLike, depth: int = 2) -> list[str]:
    """`root` itself when it is a run folder, else run folders up to `depth` levels below it."""
    root_path = path(root)
    if is_run_dir(root_path):
        return [os.fspath(root)]
    found: list[str] = []
    if depth <= 0 or not root_path.is_dir():
        return found
    for child in sorted(root_path.iterdir(), key=lambda c: c.name):
        if child.name.startswith(".") or not child.is_dir():
            continue
        found.extend(find_run_dirs(os.fspath(child), depth - 1))
    return found
