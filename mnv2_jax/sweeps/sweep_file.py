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

import dataclasses
import importlib.util
import json
import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from mnv2_jax import workdir as workdir_lib

REQUIRED_ATTRIBUTES = ("NAME", "CONFIG", "WANDB_PROJECT", "SEEDS", "sweep")
CACHE_DIR = ".jax_cache"

# Keys that are always in a run's name, with their prefixes.
CORE_KEYS = (("width", "w"), ("resolution", "r"), ("expansion", "t"), ("seed", "s"))
# Other keys appear (when non-default) in this order first, then alphabetically.
SUFFIX_ORDER = ("bottleneck_activation", "residual", "output_stride", "max_repeats", "num_classes", "dtype")

# Classes of the datasets configs use, so that listing a sweep needs no TFDS lookup.
NUM_CLASSES = {
    "imagenet2012": 1000,
    "mnist_offline": 10,
    "cifar10": 10,
    "imagenette": 10,
    "tf_flowers": 5,
    "coco/2017": 80,
    "mnist_detect_offline": 10,
    "mnist_seg_offline": 11,
    "voc2012_seg_aug": 21,
}


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
    """Analytic MAdds and parameters of a run, head included (the task's count; no JAX)."""
    from mnv2_jax import tasks

    config = sweep.resolved(run)
    full = config.dataset.split(":")[0]  # without a version; 'coco/2017' names its builder config
    name = full if full in NUM_CLASSES else full.split("/")[0]
    num_classes = config.num_classes or NUM_CLASSES.get(name, 1000)
    counts = tasks.get_task(config).count(num_classes)  # the task's head on the backbone
    return {"madds": counts["madds"], "params": counts["params"]}


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


def sweep_record(
    sweep: Sweep,
    run: Run,
    global_overrides: dict[str, Any] | None = None,
    wandb_run_id: str | None = None,
) -> dict[str, Any]:
    """The `sweep.json` a run directory carries (joined with summary.json by analysis)."""
    return workdir_lib.sweep_record(
        sweep=sweep.name,
        run=run.name,
        sweep_file=sweep.path,
        config=sweep.config,
        fixed=_jsonable(sweep.fixed),
        overrides=_jsonable(run.overrides),
        global_overrides=_jsonable(global_overrides or {}),
        swept_keys=list(sweep.swept_keys),
        project=sweep.project,
        wandb_run_id=wandb_run_id,
    )


def manifest(sweep: Sweep) -> dict[str, Any]:
    """The sweep manifest a runner writes into the sweep root: every run the sweep has, so that
    analysis can tell which runs of it are missing without loading the sweep file."""
    return workdir_lib.sweep_manifest(
        sweep=sweep.name,
        sweep_file=sweep.path,
        config=sweep.config,
        project=sweep.project,
        swept_keys=list(sweep.swept_keys),
        runs=[run.name for run in sweep.runs],
    )


def stale_keys(workdir: str, config) -> list[str]:
    """`key: was -> now` for what a complete run's config.json says differently from `config`.

    Keys a resumed run may change (config.RESUMABLE_KEYS) and keys the config leaves to the
    train loop (None: filled from the dataset or the recipe) are not compared.
    """
    from mnv2_jax import config as config_lib

    try:
        stored = config_lib.flatten(workdir_lib.read_config(workdir) or {})
    except (OSError, ValueError):
        return []
    out = []
    for key, value in config_lib.flatten(config).items():
        top = key.split(".")[0]
        if value is None or top in config_lib.RESUMABLE_KEYS or top == "provenance" or key not in stored:
            continue
        if _normalise(stored[key]) != _normalise(value):
            out.append(f"{key}: {stored[key]!r} -> {value!r}")
    return out
