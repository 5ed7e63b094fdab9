"""Sweeps: declarative grids of runs, validated before anything starts, one workdir per run.

A sweep file (`sweeps/*.py`, in the spirit of big_vision) is plain Python::

    NAME = "width_resolution"             # wandb group, default workdir root
    CONFIG = "configs/imagenet.py"         # optionally 'configs/X.py:arg'
    WANDB_PROJECT = "mnv2_jax-imagenet"
    SEEDS = 1                              # every added point runs with seeds 0..SEEDS-1
    OVERRIDES = {}                         # optional: constants for every run (part of the baseline)

    def sweep(add):
        for width in (0.35, 0.5):
            for resolution in (96, 128):
                add(width=width, resolution=resolution)

`add(**overrides)` takes config keys (dotted ones as `add(**{"optim.lr": 0.1})`); a
point that passes `seed` itself is not expanded over seeds. Runs come out seed-major (the
whole grid with the first seed, then the next), so a sweep cut short still has a full curve.

Run names are deterministic and readable: `w{width}_r{resolution}_t{expansion}_s{seed}`,
read from the resolved config, plus one suffix per other overridden key whose value
differs from the baseline (CONFIG with OVERRIDES applied) (`_relu6`, `_res-expansion`, `_os16`,
`_optim.lr-0.1`). A name therefore says how the run departs from CONFIG, and the same
point gets the same name in every sweep over the same CONFIG (so sweeps may share a
workdir root: identical names are identical configs).

`load_sweep` resolves and validates every run (`load_config` + `apply_overrides` +
`validate_config`) before anything starts: an unknown key, an invalid value or two
identical runs is a ValueError that names the run, so a typo cannot surface hours into
a sweep.

Running locally (`mnv2 sweep run FILE --workdir ROOT`): each run is a subprocess
`python -m mnv2_jax train --config CONFIG --workdir ROOT/NAME --config.k=v ...` with its
output in `ROOT/NAME/train.log`; runs whose `summary.json` says `"complete": true` are
skipped, interrupted ones resume (the train command resumes by itself), a failing run
does not stop the others. Ctrl-C or SIGTERM sends SIGTERM to the running runs (they
checkpoint and exit) and stops; rerun the same command to go on. Every run directory
also gets a `sweep.json` -- `{"sweep", "run", "sweep_file", "config", "overrides",
"global_overrides", "swept_keys", "project"}` -- which, joined with the run's
`summary.json` (madds, params, the swept keys, final eval values), is what plots need.
Runs share a persistent XLA compilation cache: `$JAX_COMPILATION_CACHE_DIR` if set,
else `ROOT/.jax_cache`.

This module imports only the standard library at load time (the CLI builds its parser
from it); `mnv2 sweep list` needs no JAX or TensorFlow and answers in about a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from mnv2_jax import storage

REQUIRED_ATTRIBUTES = ("NAME", "CONFIG", "WANDB_PROJECT", "SEEDS", "sweep")
SWEEP_JSON = "sweep.json"
LOG_FILE = "train.log"
SUMMARY_FILE = "summary.json"  # written by the train loop (mnv2_jax.train.writer)
CACHE_DIR = ".jax_cache"

# Keys that are always in a run's name, with their prefixes.
CORE_KEYS = (("width", "w"), ("resolution", "r"), ("expansion", "t"), ("seed", "s"))
# Other keys appear (when non-default) in this order first, then alphabetically.
SUFFIX_ORDER = ("bottleneck_activation", "residual", "output_stride", "max_repeats", "num_classes", "dtype")

# Classes of the datasets configs use, so that listing a sweep needs no TFDS lookup.
NUM_CLASSES = {"imagenet2012": 1000, "mnist_offline": 10, "cifar10": 10, "imagenette": 10, "tf_flowers": 5}


class Run(NamedTuple):
    """One point of a sweep: its workdir name and the config overrides that make it."""

    name: str
    overrides: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A loaded, validated sweep file."""

    name: str
    config: str  # CONFIG as written in the file (relative to the repository root)
    config_path: str  # the same with the file made absolute, for local runs
    project: str
    seeds: int
    runs: tuple[Run, ...]
    path: str  # the sweep file, absolute
    swept_keys: tuple[str, ...]  # keys whose values differ between runs (wandb tags)
    description: str = ""
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)  # OVERRIDES: every run, before its own

    def run(self, name: str) -> Run:
        for run in self.runs:
            if run.name == name:
                return run
        raise ValueError(f"sweep {self.name}: no run named {name!r}")

    def resolved(self, run: Run, global_overrides: dict[str, Any] | None = None):
        """The run's config: CONFIG, OVERRIDES, the run's overrides, then the global ones."""
        from mnv2_jax import config as config_lib

        config = config_lib.load_config(self.config_path)
        config = config_lib.apply_overrides(config, literal_overrides(self.fixed))
        config = config_lib.apply_overrides(config, literal_overrides(run.overrides))
        return config_lib.apply_overrides(config, global_overrides or {})


# ---------------------------------------------------------------------------------------------
# Loading, naming, validation


def _format_number(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _format_width(value: Any) -> str:
    # '1.0', '0.35', '1.4': TF-Slim's checkpoint names (mobilenet_v2_1.0_224) keep the '.0'.
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        return f"{float(value):.1f}"
    return _format_number(value)


def _format_label_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_format_number(v) for v in value)
    text = _format_number(value)
    # Path-safe: anything but letters, digits, '.', '+' and '-' becomes '-'.
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "none"


def _normalise(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_normalise(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_normalise(v) for v in value)
    return value


def _suffix(key: str, value: Any) -> str:
    text = _format_label_value(value)
    if key == "bottleneck_activation":
        return text
    if key == "residual":
        return f"res-{text}"
    if key == "output_stride":
        return f"os{text}"
    if key == "max_repeats":
        return f"rep{text}"
    return f"{key}-{text}"


def run_name(defaults: dict[str, Any], values: dict[str, Any], overridden: Sequence[str]) -> str:
    """`w0.75_r160_t6_s0[_suffixes]`: the core keys always, other overridden keys when non-default.

    `defaults` and `values` are flattened configs (dotted keys): CONFIG's and the run's.
    """
    parts = []
    for key, prefix in CORE_KEYS:
        value = values.get(key, defaults.get(key))
        text = _format_width(value) if key == "width" else _format_label_value(value)
        parts.append(f"{prefix}{text}")
    core = {k for k, _ in CORE_KEYS}
    extra = [k for k in overridden if k not in core]
    ordered = [k for k in SUFFIX_ORDER if k in extra] + sorted(k for k in extra if k not in SUFFIX_ORDER)
    for key in ordered:
        value = values.get(key)
        if key in defaults and _normalise(value) == _normalise(defaults[key]):
            continue
        parts.append(_suffix(key, value))
    return "_".join(parts)


def _import_sweep_module(path: str):
    spec = importlib.util.spec_from_file_location(f"_mnv2_sweep_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"sweep file {path!r}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_config_path(config: str, sweep_path: str) -> str:
    """CONFIG's file made absolute: relative to the current directory, else to the repository
    (the sweep file's parent's parent, where `configs/` sits next to `sweeps/`)."""
    file, sep, arg = config.partition(":")
    if os.path.isabs(file):
        return config
    here = os.path.dirname(os.path.abspath(sweep_path))
    for base in (os.getcwd(), os.path.dirname(here), here):
        candidate = os.path.join(base, file)
        if os.path.isfile(candidate):
            return os.path.abspath(candidate) + sep + arg
    raise ValueError(
        f"sweep file {sweep_path}: CONFIG {config!r} not found (looked relative to the current "
        f"directory and to {os.path.dirname(here)})"
    )


def literal_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Sweep-file values for `config.apply_overrides`, which parses every string as command-line
    text ('none' would become None): strings go in as text that parses back to themselves."""
    return {k: format_value(v) if isinstance(v, str) else v for k, v in overrides.items()}


def _describe(index: int, overrides: dict[str, Any]) -> str:
    shown = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    return f"run #{index} ({shown})"


def load_sweep(path: str) -> Sweep:
    """Load a sweep file and resolve and validate every run; ValueError names the bad run."""
    from mnv2_jax import config as config_lib

    if not os.path.isfile(path):
        raise ValueError(f"no such sweep file {path!r}")
    module = _import_sweep_module(path)
    missing = [a for a in REQUIRED_ATTRIBUTES if not hasattr(module, a)]
    if missing:
        raise ValueError(
            f"sweep file {path}: missing {', '.join(missing)} (a sweep file defines NAME, CONFIG, "
            "WANDB_PROJECT, SEEDS and def sweep(add))"
        )
    name, config_spec, project, seeds = module.NAME, module.CONFIG, module.WANDB_PROJECT, module.SEEDS
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise ValueError(f"sweep file {path}: NAME must be a path-safe string, got {name!r}")
    if not isinstance(config_spec, str) or not isinstance(project, str):
        raise ValueError(f"sweep file {path}: CONFIG and WANDB_PROJECT must be strings")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"sweep file {path}: SEEDS must be an integer >= 1, got {seeds!r}")
    if not callable(module.sweep):
        raise ValueError(f"sweep file {path}: sweep must be a function sweep(add)")
    fixed = dict(getattr(module, "OVERRIDES", None) or {})

    points: list[dict[str, Any]] = []

    def add(**overrides: Any) -> None:
        points.append(dict(overrides))

    module.sweep(add)
    if not points:
        raise ValueError(f"sweep {name}: sweep(add) added no runs")

    config_path = resolve_config_path(config_spec, path)
    base = config_lib.load_config(config_path)
    try:
        base = config_lib.apply_overrides(base, literal_overrides(fixed))
    except ValueError as e:
        raise ValueError(f"sweep {name}: OVERRIDES: {e}") from None
    defaults = config_lib.flatten(base)
    base_seed = int(base.seed)

    # Seed-major: the whole grid with the first seed, then the next.
    expanded: list[dict[str, Any]] = []
    for s in range(seeds):
        for point in points:
            if "seed" in point:
                if s == 0:
                    expanded.append(dict(point))
            else:
                expanded.append({**point, "seed": base_seed + s})

    runs: list[Run] = []
    seen: dict[str, int] = {}
    by_name: dict[str, tuple[int, dict]] = {}
    for i, overrides in enumerate(expanded):
        try:
            config = config_lib.apply_overrides(base, literal_overrides(overrides))
        except ValueError as e:
            raise ValueError(f"sweep {name}: {_describe(i, overrides)}: {e}") from None
        values = config_lib.flatten(config)
        run = Run(run_name(defaults, values, list(overrides)), overrides)
        try:
            config_lib.validate_config(config)
        except ValueError as e:
            raise ValueError(f"sweep {name}: run {run.name}: {e}") from None
        key = json.dumps(values, sort_keys=True, default=repr)  # the whole resolved config
        if key in seen:
            raise ValueError(
                f"sweep {name}: run {run.name} (#{i}) is identical to run #{seen[key]}: "
                "two runs with the same config"
            )
        seen[key] = i
        if run.name in by_name:
            j, other = by_name[run.name]
            raise ValueError(
                f"sweep {name}: runs #{j} ({other}) and #{i} ({overrides}) both get the name {run.name}"
            )
        by_name[run.name] = (i, overrides)
        runs.append(run)

    swept = []
    for key in dict.fromkeys(k for run in runs for k in run.overrides):
        values = {json.dumps(_normalise(run.overrides.get(key)), default=repr) for run in runs}
        if len(values) > 1:
            swept.append(key)
    return Sweep(
        name=name,
        config=config_spec,
        config_path=config_path,
        project=project,
        seeds=seeds,
        runs=tuple(runs),
        path=os.path.abspath(path),
        swept_keys=tuple(swept),
        description=(module.__doc__ or "").strip(),
        fixed=fixed,
    )


def validate_global_overrides(sweep: Sweep, overrides: dict[str, Any]) -> None:
    """Global overrides (`--config.KEY=VALUE` for every run) must leave every run valid and
    must not touch a swept key (that would make runs identical)."""
    from mnv2_jax import config as config_lib

    clash = [k for k in overrides if k in sweep.swept_keys or k == "seed"]
    if clash:
        raise ValueError(
            f"sweep {sweep.name}: --config.{clash[0]} would override a key the sweep varies "
            f"({', '.join(sweep.swept_keys)}); change the sweep file instead"
        )
    for run in sweep.runs:
        try:
            config_lib.validate_config(sweep.resolved(run, overrides))
        except ValueError as e:
            raise ValueError(f"sweep {sweep.name}: run {run.name} with the global overrides: {e}") from None


# ---------------------------------------------------------------------------------------------
# Listing


def run_counts(sweep: Sweep, run: Run) -> dict[str, int]:
    """Analytic MAdds and parameters of a run (mnv2_jax.accounting; no JAX)."""
    from mnv2_jax import accounting
    from mnv2_jax import config as config_lib

    config = sweep.resolved(run)
    num_classes = config.num_classes or NUM_CLASSES.get(config.dataset, 1000)
    counts = accounting.count(config_lib.architecture_from_config(config, num_classes), config.resolution)
    return {"madds": counts.madds, "params": counts.params}


def list_runs(sweep: Sweep) -> list[dict[str, Any]]:
    """`[{"name", "overrides", "madds", "params"}, ...]` in run order."""
    return [
        {"name": run.name, "overrides": _jsonable(run.overrides), **run_counts(sweep, run)}
        for run in sweep.runs
    ]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _cell(key: str, overrides: dict[str, Any]) -> str:
    if key not in overrides:
        return ""
    value = overrides[key]
    return _format_width(value) if key == "width" else _format_label_value(value)


def format_listing(sweep: Sweep, rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row["overrides"]))
    header = ["name", *keys, "MAdds", "params"]
    table = [header]
    for row in rows:
        table.append(
            [
                row["name"],
                *(_cell(k, row["overrides"]) for k in keys),
                f"{row['madds'] / 1e6:.1f}M",
                f"{row['params'] / 1e6:.2f}M",
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [
        f"sweep {sweep.name} ({os.path.relpath(sweep.path)}): config {sweep.config}, wandb project "
        f"{sweep.project}, swept: {', '.join(sweep.swept_keys) or 'nothing'}"
        + (f"; every run: {', '.join(f'{k}={v!r}' for k, v in sweep.fixed.items())}" if sweep.fixed else "")
    ]
    for k, r in enumerate(table):
        lines.append("  ".join([r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:]))]))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"{len(rows)} runs")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Train commands (shared with mnv2_jax.sweeps.launch)


def format_value(value: Any) -> str:
    """A value as `--config.KEY=VALUE` text that `config.parse_value` reads back unchanged:
    plain text for strings that survive the round trip, a Python literal otherwise."""
    from mnv2_jax.config import parse_value

    if isinstance(value, str):
        return value if parse_value(value) == value else repr(value)
    if isinstance(value, tuple):
        return repr(list(value))
    return repr(value)


def override_args(overrides: dict[str, Any], text: bool = False) -> list[str]:
    """`--config.KEY=VALUE` arguments; `text=True`: string values are command-line text already
    (global overrides as typed), passed on unchanged."""
    return [
        f"--config.{key}={value if text and isinstance(value, str) else format_value(value)}"
        for key, value in overrides.items()
    ]


def wandb_args(project: str, group: str, name: str, tags: Sequence[str]) -> list[str]:
    """wandb group = sweep name, run name = workdir name, tags = the swept keys."""
    return [
        f"--config.wandb.project={format_value(project)}",
        f"--config.wandb.group={format_value(group)}",
        f"--config.wandb.name={format_value(name)}",
        f"--config.wandb.tags={format_value(list(tags))}",
    ]


def train_args(
    sweep: Sweep,
    run: Run,
    workdir: str,
    global_overrides: dict[str, Any] | None = None,
    config: str | None = None,
    tags: Sequence[str] | None = None,
) -> list[str]:
    """What follows `mnv2 train` for one run (global overrides after the run's own)."""
    return [
        "--config",
        config or sweep.config_path,
        "--workdir",
        workdir,
        *override_args(sweep.fixed),
        *override_args(run.overrides),
        *override_args(global_overrides or {}, text=True),
        *wandb_args(sweep.project, sweep.name, run.name, sweep.swept_keys if tags is None else tags),
    ]


def sweep_record(sweep: Sweep, run: Run, global_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `sweep.json` a run directory carries (joined with summary.json by analysis)."""
    return {
        "sweep": sweep.name,
        "run": run.name,
        "sweep_file": sweep.path,
        "config": sweep.config,
        "fixed": _jsonable(sweep.fixed),
        "overrides": _jsonable(run.overrides),
        "global_overrides": _jsonable(global_overrides or {}),
        "swept_keys": list(sweep.swept_keys),
        "project": sweep.project,
    }


def write_json(path: str, obj: Any) -> None:
    """Replace the JSON file at `path` (local or gs://) atomically."""
    storage.write_text(path, json.dumps(obj, indent=2) + "\n")


def read_summary(workdir: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_text(storage.join(workdir, SUMMARY_FILE)) or "null")
    except (OSError, json.JSONDecodeError):
        return None


def is_complete(workdir: str) -> bool:
    summary = read_summary(workdir)
    return bool(summary and summary.get("complete") is True)


def stale_keys(workdir: str, config) -> list[str]:
    """`key: was -> now` for what a complete run's config.json says differently from `config`.

    Keys a resumed run may change (config.RESUMABLE_KEYS) and keys the config leaves to the
    train loop (None: filled from the dataset or the recipe) are not compared.
    """
    from mnv2_jax import config as config_lib

    try:
        stored = config_lib.flatten(
            json.loads(storage.read_text(storage.join(workdir, "config.json")) or "{}")
        )
    except (OSError, json.JSONDecodeError):
        return []
    out = []
    for key, value in config_lib.flatten(config).items():
        top = key.split(".")[0]
        if value is None or top in config_lib.RESUMABLE_KEYS or top == "provenance" or key not in stored:
            continue
        if _normalise(stored[key]) != _normalise(value):
            out.append(f"{key}: {stored[key]!r} -> {value!r}")
    return out


# ---------------------------------------------------------------------------------------------
# The local runner


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f.readlines()[-50:] if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


@dataclasses.dataclass
class SweepResult:
    """What a local sweep invocation did; `exit_code` is non-zero if a run failed or it was stopped."""

    total: int
    done: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)  # name, exit code, log
    interrupted: list[str] = dataclasses.field(default_factory=list)
    not_started: list[str] = dataclasses.field(default_factory=list)
    stale: list[str] = dataclasses.field(default_factory=list)  # complete, but with another config
    signal: int | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.signal is not None:
            return 128 + self.signal
        return 1 if self.failed else 0


@dataclasses.dataclass
class _Running:
    run: Run
    process: subprocess.Popen
    log_path: str
    started: float
    log_file: Any


def run_sweep(
    sweep: Sweep,
    root: str,
    global_overrides: dict[str, Any] | None = None,
    parallel: int = 1,
    *,
    command_prefix: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
    poll_interval: float = 0.5,
    stop_timeout: float = 600.0,
) -> SweepResult:
    """Run every incomplete run of `sweep` under `root`, `parallel` at a time.

    `command_prefix` replaces `python -m mnv2_jax` (tests use a fake trainer). Completed runs
    are skipped; the others start (or resume: the train command resumes a workdir by itself).
    """
    global_overrides = dict(global_overrides or {})
    validate_global_overrides(sweep, global_overrides)
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    if not storage.is_remote(root):
        root = os.path.abspath(root)
    storage.ensure_writable(root, "--workdir")
    prefix = list(command_prefix or (sys.executable, "-m", "mnv2_jax"))
    child_env = dict(os.environ if env is None else env)
    # One compilation cache for the whole sweep (an explicit setting wins, e.g. the test suite's);
    # with a remote root, each run's default local cache.
    if not storage.is_remote(root):
        child_env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(root, CACHE_DIR))
    child_env.setdefault("PYTHONUNBUFFERED", "1")

    start = time.time()
    result = SweepResult(total=len(sweep.runs))
    pending: list[Run] = []
    for run in sweep.runs:
        workdir = storage.join(root, run.name)
        if is_complete(workdir):
            result.skipped.append(run.name)
            differing = stale_keys(workdir, sweep.resolved(run, global_overrides))
            if differing:
                result.stale.append(run.name)
                log(
                    f"warning: {run.name} is complete but was trained with another config "
                    f"({'; '.join(differing[:3])}{'; ...' if len(differing) > 3 else ''}); not rerun"
                )
        else:
            pending.append(run)
    log(
        f"sweep {sweep.name}: {len(sweep.runs)} runs, {len(result.skipped)} already complete (skipped), "
        f"{len(pending)} to run, {parallel} at a time; logs in {os.path.dirname(os.path.dirname(log_file_path(root, sweep, sweep.runs[0])))}/<run>/{LOG_FILE}"
    )

    stop: dict[str, int | None] = {"signal": None}
    handlers: dict[int, Any] = {}
    running: list[_Running] = []
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum, _frame):
            if stop["signal"] is not None and signum == signal.SIGINT:
                # A second Ctrl-C: do not wait for checkpoints.
                for item in running:
                    _signal_group(item.process, signal.SIGKILL)
            stop["signal"] = signum

        for signum in (signal.SIGINT, signal.SIGTERM):
            handlers[signum] = signal.signal(signum, on_signal)

    durations: list[float] = []
    finished = len(result.skipped)
    try:
        while (pending and stop["signal"] is None) or running:
            while pending and len(running) < parallel and stop["signal"] is None:
                run = pending.pop(0)
                running.append(_start(sweep, run, root, global_overrides, prefix, child_env, log))
            time.sleep(poll_interval)
            if stop["signal"] is not None:
                _stop_all(running, stop_timeout, log)
            for item in [r for r in running if r.process.poll() is not None]:
                running.remove(item)
                item.log_file.close()
                seconds = time.time() - item.started
                workdir = storage.join(root, item.run.name)
                rc = item.process.returncode
                finished += 1
                if rc == 0 and is_complete(workdir):
                    result.done.append(item.run.name)
                    durations.append(seconds)
                    summary = read_summary(workdir) or {}
                    top1 = summary.get("eval_ema/top1", summary.get("eval/top1"))
                    shown = f", eval top-1 {top1:.4f}" if isinstance(top1, (int, float)) else ""
                    left = len(pending) + len(running)
                    eta = sum(durations) / len(durations) * left / parallel
                    log(
                        f"[{finished}/{result.total}] done {item.run.name} in {_duration(seconds)}{shown}"
                        + (f", ETA {_duration(eta)}" if left and stop["signal"] is None else "")
                    )
                elif stop["signal"] is not None:
                    finished -= 1
                    result.interrupted.append(item.run.name)
                    log(f"stopped {item.run.name} after {_duration(seconds)} (exit {rc}); a rerun resumes it")
                else:
                    if rc == 0:
                        rc = -1  # exited 0 without a complete summary: count it as a failure
                    result.failed.append((item.run.name, rc, item.log_path))
                    log(
                        f"[{finished}/{result.total}] FAILED {item.run.name} (exit {rc}) after "
                        f"{_duration(seconds)}; log: {item.log_path}"
                    )
    finally:
        for item in running:  # only on an unexpected error in this loop
            _signal_group(item.process, signal.SIGTERM)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    result.not_started = [run.name for run in pending]
    result.signal = stop["signal"]
    result.seconds = time.time() - start
    log(format_report(sweep, root, result))
    return result


def log_file_path(root: str, sweep: Sweep, run: Run) -> str:
    """ROOT/<run>/train.log; under a remote root (gs://, which cannot be appended to) the log
    stays on this machine, in ~/.cache/mnv2_jax/logs/<sweep>/<run>/train.log."""
    if storage.is_remote(root):
        return os.path.join(os.path.expanduser("~/.cache/mnv2_jax/logs"), sweep.name, run.name, LOG_FILE)
    return os.path.join(root, run.name, LOG_FILE)


def _start(
    sweep: Sweep,
    run: Run,
    root: str,
    global_overrides: dict[str, Any],
    prefix: list[str],
    env: dict[str, str],
    log: Callable[[str], None],
) -> _Running:
    workdir = storage.join(root, run.name)
    resuming = any(storage.exists(storage.join(workdir, f)) for f in ("config.json", "checkpoints"))
    storage.makedirs(workdir)
    write_json(storage.join(workdir, SWEEP_JSON), sweep_record(sweep, run, global_overrides))
    argv = [*prefix, "train", *train_args(sweep, run, workdir, global_overrides)]
    log_path = log_file_path(root, sweep, run)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    log_file = open(log_path, "a")
    log_file.write(f"=== mnv2 sweep {sweep.name}: {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
    log_file.flush()
    # A session of its own: Ctrl-C reaches the runner only, which then SIGTERMs the run so
    # that it checkpoints instead of dying mid-step.
    process = subprocess.Popen(
        argv,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    log(f"{'resume' if resuming else 'start'} {run.name}")
    return _Running(run, process, log_path, time.time(), log_file)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_all(running: list[_Running], timeout: float, log: Callable[[str], None]) -> None:
    """SIGTERM every running run (the train loop checkpoints and exits), then wait for them."""
    if not running:
        return
    log(f"stopping {len(running)} running run(s): SIGTERM, waiting for their checkpoints")
    for item in running:
        _signal_group(item.process, signal.SIGTERM)
    deadline = time.time() + timeout
    for item in running:
        try:
            item.process.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            _signal_group(item.process, signal.SIGKILL)
            item.process.wait()


def format_report(sweep: Sweep, root: str, result: SweepResult) -> str:
    lines = [
        f"sweep {sweep.name}: {len(result.done)} done, {len(result.skipped)} skipped (complete), "
        f"{len(result.failed)} failed"
        + (
            f", {len(result.interrupted)} interrupted, {len(result.not_started)} not started"
            if result.signal
            else ""
        )
        + f" of {result.total}, in {_duration(result.seconds)}; workdirs in {root}"
    ]
    if result.stale:
        lines.append(
            f"stale (complete, but trained with another config; delete them or use a new --workdir to "
            f"retrain): {', '.join(result.stale)}"
        )
    if result.failed:
        lines.append("failed runs:")
        for name, rc, path in result.failed:
            last = _last_line(path)
            lines.append(f"  {name}  exit {rc}  log: {path}" + (f"\n      {last}" if last else ""))
    if result.signal is not None:
        lines.append("stopped by a signal; rerun the same command to resume")
    elif result.failed:
        lines.append("rerun the same command to retry the failed runs (completed runs are skipped)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line (`mnv2 sweep ...`): the parser is built here so that cli.py stays small.


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `mnv2 sweep {list,run,launch,export-wandb,train,agent}`."""
    p = sub.add_parser(
        "sweep",
        help="list, run, launch (Cloud TPU) or export (wandb) a sweep file",
        description="Sweeps declared in sweeps/*.py: one workdir per run, validated before anything starts.",
    )
    s = p.add_subparsers(dest="sweep_command", required=True, metavar="SUBCOMMAND")

    q = s.add_parser("list", help="every run with its overrides, MAdds and parameters (no JAX)")
    q.add_argument("file", help="sweeps/X.py")
    q.add_argument(
        "--json", action="store_true", help='{"count": N, "runs": [{name, overrides, madds, params}]}'
    )

    q = s.add_parser(
        "run",
        help="run the sweep here, one subprocess per run (rerun to resume; completed runs are skipped)",
        description="Extra --config.KEY=VALUE arguments apply to every run (e.g. to shorten them).",
    )
    q.add_argument("file")
    q.add_argument("--workdir", required=True, help="root: one directory per run, ROOT/<run name>")
    q.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1)")
    q.add_argument(
        "--plot",
        default=None,
        help="then draw these plots (comma-separated kinds of `mnv2 plot`, e.g. fig5,table) into ROOT/plots",
    )

    q = s.add_parser(
        "launch",
        help="submit the sweep to Cloud TPU (one SkyPilot managed job per run), or print one train command per run",
        description=(
            "Extra --config.KEY=VALUE arguments apply to every run. The workers run the commit this "
            "checkout is at (uncommitted changes are refused)."
        ),
    )
    q.add_argument("file")
    q.add_argument("--tpu", default=None, help="TPU type per run, e.g. v4-32, v5litepod-16, v6e-8")
    q.add_argument("--workdir", default=None, help="runs root, gs://BUCKET/PATH: one folder per run")
    q.add_argument("--data-dir", default=None, help="TFDS_DATA_DIR on the workers (gs://BUCKET/tfds)")
    q.add_argument("--use-spot", action="store_true", help="spot TPUs; SkyPilot recovers preempted runs")
    q.add_argument("--zone", default=None, help="GCP zone (default: wherever SkyPilot finds the TPU)")
    q.add_argument("--region", default=None, help="GCP region (default: any)")
    q.add_argument(
        "--tasks-dir", default=None, help="where the task YAMLs and the code go (default sky_tasks/NAME)"
    )
    q.add_argument(
        "--dry-run", action="store_true", help="write the task YAMLs, print the commands, submit nothing"
    )
    q.add_argument(
        "--print-commands",
        action="store_true",
        help="print one `mnv2 train ...` line per run (Slurm arrays etc.)",
    )

    q = s.add_parser("export-wandb", help="write a wandb sweep YAML (method grid) for `wandb sweep`")
    q.add_argument("file")
    q.add_argument("--out", default=None, help="output file (default: stdout)")
    q.add_argument("--workdir", default=None, help="runs root on the agents (default runs/<sweep name>)")

    q = s.add_parser(
        "train",
        help="train one run of a wandb sweep: workdir ROOT/<run name> derived from the overrides",
        description="What `wandb agent` runs (see export-wandb); extra --config.KEY=VALUE: the run.",
    )
    q.add_argument("--config", required=True, help="configs/X.py[:ARG]")
    q.add_argument("--workdir-root", required=True)
    q.add_argument("--group", default=None, help="wandb group (the sweep name)")
    q.add_argument("--tags", default="", help="comma-separated wandb tags (the swept keys)")
    q.add_argument(
        "--project", default=None, help="wandb project (default: $WANDB_PROJECT, else the config's)"
    )
    q.add_argument("--overrides", default=None, help="a JSON object of overrides (non-grid sweeps)")
    q.add_argument(
        "--fixed", default=None, help="a JSON object: the sweep file's OVERRIDES (not in the name)"
    )

    q = s.add_parser(
        "agent",
        help="multi-host wandb agent: process 0 takes the next run and broadcasts it to every host",
    )
    q.add_argument("sweep_id", help="SWEEP_ID or ENTITY/PROJECT/SWEEP_ID")
    q.add_argument("--workdir", required=True, help="runs root: ROOT/<run name>")
    q.add_argument(
        "--count", type=int, default=None, help="runs to do (default: until the sweep is exhausted)"
    )
    q.add_argument(
        "--config", default=None, help="configs/X.py[:ARG] (default: read from the sweep's command)"
    )
    return p


def main(args: argparse.Namespace, extra: list[str]) -> int:
    """`mnv2 sweep ...`; returns the exit code."""
    command = args.sweep_command
    overrides: dict[str, Any] = {}
    if extra:
        if command not in ("run", "launch", "train"):
            raise ValueError(f"unrecognized arguments: {' '.join(extra)}")
        from mnv2_jax.config import parse_override_args

        overrides = parse_override_args(extra)

    if command == "train":
        from mnv2_jax.sweeps import launch

        launch.train_one_from_cli(args, overrides)
        return 0
    if command == "agent":
        from mnv2_jax.sweeps import launch

        return launch.agent(args.sweep_id, args.workdir, count=args.count, config=args.config)

    sweep = load_sweep(args.file)
    if command == "list":
        rows = list_runs(sweep)
        if args.json:
            print(json.dumps({"count": len(rows), "runs": rows}))
        else:
            print(format_listing(sweep, rows))
        return 0
    if command == "run":
        code = run_sweep(sweep, args.workdir, overrides, parallel=args.parallel).exit_code
        if args.plot:
            from mnv2_jax.analysis import figures as analysis

            runs = analysis.load_runs([args.workdir])
            for kind in args.plot.split(","):
                for path in analysis.make(kind.strip(), runs, storage.join(args.workdir, "plots")):
                    print(f"wrote {path}")
        return code
    if command == "launch":
        from mnv2_jax.sweeps import launch

        return launch.main(sweep, args, overrides)
    if command == "export-wandb":
        from mnv2_jax.sweeps import launch

        text = launch.wandb_yaml(sweep, args.workdir or f"runs/{sweep.name}")
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
            print(
                f"wrote {args.out}: `wandb sweep {args.out}`, then `wandb agent ENTITY/PROJECT/ID`",
                file=sys.stderr,
            )
        else:
            sys.stdout.write(text)
        return 0
    raise ValueError(f"unknown sweep command {command!r}")
