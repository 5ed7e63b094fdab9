"""Finished runs as records for plots and tables, read from run folders or from wandb.

Analysis reads only what runs wrote (`mnv2_jax.workdir`: run folders and sweep manifests) or
what wandb holds; it never imports the sweep code.

* loaders turn a source into a list of `Run` records -- `load_runs(roots)` from run
  workdirs (`summary.json` + `metrics.jsonl`; a root is a run directory or holds them, a
  level or two down), `load_wandb(path)` from the wandb server (each run's summary and
  history) -- the same records either way;
* `aggregate(runs)` merges runs that differ only in seed into `Point`s (mean and sample
  standard deviation over seeds), and the plotters and the table read points.

A run without `summary.json`, or whose summary does not say `"complete": true`, is not
plotted: it is reported on stderr by name (with how far it got) and skipped, so a half
finished sweep never silently loses a point; so are the runs of a sweep that never started
(the sweep root's manifest lists every run of the sweep; runs without a folder are listed).
The metric is the task's (`TASK_METRICS`: top-1, COCO AP, mIOU) of the EMA weights (`eval_ema/...`)
unless `metric` says otherwise (`eval/...`: raw weights). Each plot kind reads runs of one task
(`KIND_TASKS`); the table reads runs of any one task.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mnv2_jax import workdir as workdir_lib

KINDS = ("fig5", "fig6a", "fig6b", "expansion", "ap", "miou", "table")
DEFAULT_METRIC = "eval_ema/top1"
RAW_METRIC = "eval/top1"
# The metric each task's evaluator reports (`eval/<name>`, `eval_ema/<name>`), plotted by default.
TASK_METRICS = {"classification": "top1", "detection": "AP", "segmentation": "miou"}
# The task whose runs each figure draws (the table takes any one task).
KIND_TASKS = {
    "fig5": "classification",
    "fig6a": "classification",
    "fig6b": "classification",
    "expansion": "classification",
    "ap": "detection",
    "miou": "segmentation",
}
# Runs written before the summary named its task are classification runs.
DEFAULT_TASK = "classification"
# Settings of a task's head that tell its networks apart, and where the run's config.json holds
# them (the summary does not); runs of other tasks have None there.
TASK_KEYS = {
    "detection": {"head": "detection.head"},
    "segmentation": {
        "aspp": "segmentation.aspp",
        "eval_scales": "segmentation.eval_scales",
        "eval_flip": "segmentation.eval_flip",
    },
}
HEAD_KEYS = tuple(key for keys in TASK_KEYS.values() for key in keys)
SUMMARY_FILE = workdir_lib.SUMMARY
THROUGHPUT_KEY = "train/images_per_sec"

# What makes a point of a sweep: runs that agree on all of these (and differ at most in
# seed) are seeds of one point. madds/params guard against merging different networks.
# Their order is that of the parts of a curve's label (the head's settings first).
POINT_KEYS = (
    "task",
    "dataset",
    "head",
    "output_stride",
    "aspp",
    "eval_scales",
    "eval_flip",
    "width",
    "resolution",
    "expansion",
    "bottleneck_activation",
    "residual",
    "max_repeats",
    "recipe",
    "total_steps",
    "madds",
    "params",
)
COUNT_KEYS = ("madds", "params", "params_bn")
CONFIG_KEYS = (*POINT_KEYS, "seed", "params_bn")
NOT_RUNS = ("plots", "checkpoints", "wandb", "export", "profile")


class AnalysisError(ValueError):
    """Nothing to plot, an unreadable source, wandb offline: the CLI prints it as one line."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Records


@dataclasses.dataclass
class Run:
    """One finished run, from a workdir or from wandb (equal records from either source).

    `config`: the sweep axes and counts (POINT_KEYS, seed, params_bn); `metrics`: the final
    eval values of the summary (`eval/top1`, `eval_ema/top1`, ...); `curves`: every eval
    metric logged during training as `(steps, values)`; `images_per_sec`: every logged
    `train/images_per_sec`.
    """

    name: str
    config: dict[str, Any]
    metrics: dict[str, float]
    curves: dict[str, tuple[tuple[int, ...], tuple[float, ...]]]
    images_per_sec: tuple[float, ...] = ()
    source: str = dataclasses.field(default="", compare=False)
    summary: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    def point_key(self) -> tuple:
        return tuple((k, self.config.get(k)) for k in POINT_KEYS)


@dataclasses.dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (0 for one value) over `n` seeds."""

    mean: float
    std: float
    n: int

    @staticmethod
    def of(values: Sequence[float]) -> Stat:
        values = [float(v) for v in values]
        if not values:
            return Stat(math.nan, math.nan, 0)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return Stat(statistics.fmean(values), std, len(values))


@dataclasses.dataclass
class Point:
    """The runs of one sweep point (all seeds) and their aggregates."""

    name: str  # the first run's name without its seed (`w0.5_r160_t6`)
    config: dict[str, Any]  # POINT_KEYS values, plus params_bn
    runs: list[Run]

    @property
    def seeds(self) -> list[Any]:
        return [run.seed for run in self.runs]

    def stat(self, metric: str) -> Stat:
        return Stat.of([run.metrics[metric] for run in self.runs if _is_number(run.metrics.get(metric))])

    def images_per_sec(self) -> float | None:
        """Median of every logged `train/images_per_sec` of every seed."""
        values = [v for run in self.runs for v in run.images_per_sec if math.isfinite(v)]
        return statistics.median(values) if values else None

    def curve(self, metric: str):
        """`(steps, mean, std)` numpy arrays over the seeds that logged each step."""
        import numpy as np

        by_step: dict[int, list[float]] = {}
        for run in self.runs:
            for step, value in zip(*run.curves.get(metric, ((), ()))):
                by_step.setdefault(step, []).append(value)
        steps = sorted(by_step)
        stats = [Stat.of(by_step[s]) for s in steps]
        return (
            np.array(steps, dtype=np.int64),
            np.array([s.mean for s in stats]),
            np.array([s.std for s in stats]),
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "-".join(_fmt(v) for v in value)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any) -> float:
    """A logged value as a float (non-finite values are logged as strings: 'nan')."""
    if isinstance(value, bool):
        return math.nan
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _normalise(key: str, value: Any) -> Any:
    """One spelling per value whatever the source (JSON lists, wandb ints for floats)."""
    if value is None:
        return None
    if key == "expansion":
        if isinstance(value, (list, tuple)):
            values = tuple(float(v) for v in value)
            return values[0] if len(values) == 1 else values
        return float(value)
    if key == "width":
        return float(value)
    if key == "eval_scales":  # a JSON list; a tuple keeps the point key hashable
        return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else (float(value),)
    if key in ("resolution", "seed", "total_steps", "output_stride", "max_repeats", *COUNT_KEYS):
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    return value


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    """`config['a.b']` (wandb's flat spelling) or `config['a']['b']` (config.json's nesting)."""
    if dotted in config:
        return config[dotted]
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def run_from_records(
    name: str, summary: dict[str, Any], config: dict[str, Any], records: Iterable[dict[str, Any]], source: str
) -> Run:
    """A `Run` from a summary, the resolved config (fills keys the summary lacks) and metric records
    (`{"step": ..., key: value}`; records with the same step belong together)."""
    merged: dict[int, dict[str, Any]] = {}
    throughput = []
    for record in records:
        step = record.get("step")
        if not isinstance(step, (int, float)):
            continue
        merged.setdefault(int(step), {}).update(record)
        if THROUGHPUT_KEY in record:
            throughput.append(_number(record[THROUGHPUT_KEY]))
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for step in sorted(merged):
        for key, value in merged[step].items():
            if key.startswith("eval") and "time" not in key and "per_sec" not in key:
                steps, values = curves.setdefault(key, ([], []))
                steps.append(step)
                values.append(_number(value))
    task = summary.get("task", config.get("task")) or DEFAULT_TASK
    task_keys = TASK_KEYS.get(task, {})
    run_config = {}
    for key in CONFIG_KEYS:
        if key == "task":
            value = task
        elif key in HEAD_KEYS:
            value = summary.get(key, _lookup(config, task_keys[key])) if key in task_keys else None
        else:
            value = summary.get(key, config.get(key))
        run_config[key] = _normalise(key, value)
    final = {k: _number(v) for k, v in summary.items() if k.startswith("eval") and _is_number(_number(v))}
    return Run(
        name=name,
        config=run_config,
        metrics=final,
        curves={k: (tuple(s), tuple(v)) for k, (s, v) in sorted(curves.items())},
        images_per_sec=tuple(throughput),
        source=source,
        summary=dict(summary),
    )


# ---------------------------------------------------------------------------------------------
# Loading: workdirs


def _name(workdir: str) -> str:
    return (
        workdir_lib.path(workdir).name
        if not workdir_lib.is_local(workdir)
        else os.path.basename(os.path.normpath(workdir))
    )


def _parent(workdir: str) -> str:
    """The folder holding `workdir` (for gs:// by URL: `os.path` would fold its '//')."""
    if workdir_lib.is_local(workdir):
        return os.path.dirname(os.path.normpath(workdir))
    return str(workdir_lib.path(workdir).parent)


def find_run_dirs(root: str, depth: int = 2) -> list[str]:
    """`root` itself if it is a run directory, else the run directories below it (sorted)."""
    if not workdir_lib.path(root).is_dir():
        raise AnalysisError(f"{root}: no such directory")
    if workdir_lib.is_run_dir(root):
        return [root]
    found = []
    for child in sorted(workdir_lib.path(root).iterdir(), key=lambda c: c.name):
        if child.name.startswith(".") or child.name in NOT_RUNS or not child.is_dir():
            continue
        path = os.path.join(root, child.name) if workdir_lib.is_local(root) else str(child)
        if workdir_lib.is_run_dir(path):
            found.append(path)
        elif depth > 1:
            found.extend(find_run_dirs(path, depth - 1))
    return found


def _progress(records: list[dict[str, Any]], config: dict[str, Any]) -> str:
    steps = [r["step"] for r in records if isinstance(r.get("step"), (int, float))]
    total = config.get("total_steps")
    if not steps:
        return "nothing logged yet"
    return f"last logged step {max(steps)}" + (f" of {total}" if total else "")


def read_run(workdir: str) -> Run | str:
    """The `Run` of a finished workdir, or the reason it is not one (a string)."""
    name = _name(workdir)
    try:
        config = workdir_lib.read_config(workdir) or {}
    except (OSError, ValueError):
        config = {}
    records = workdir_lib.read_metrics(workdir)
    if not workdir_lib.path(workdir, SUMMARY_FILE).exists():
        return f"no {SUMMARY_FILE} ({_progress(records, config)})"
    try:
        summary = workdir_lib.read_json(workdir_lib.path(workdir, SUMMARY_FILE))
    except (OSError, ValueError) as e:
        return f"unreadable {SUMMARY_FILE} ({e})"
    if summary.get(workdir_lib.COMPLETE_KEY) is not True:
        return f"not complete ({SUMMARY_FILE} has complete={summary.get('complete')!r}; {_progress(records, {**config, **summary})})"
    source = os.path.abspath(workdir) if workdir_lib.is_local(workdir) else workdir
    return run_from_records(name, summary, config, records, source=source)


def load_runs(roots: Sequence[str], log: Callable[[str], None] = _stderr) -> list[Run]:
    """Every finished run under `roots`; unfinished or broken ones are reported through `log`."""
    runs, seen = [], set()
    for root in roots:
        dirs = find_run_dirs(root)
        if not dirs:
            log(f"{root}: no run directories found")
        for workdir in dirs:
            real = os.path.realpath(workdir) if workdir_lib.is_local(workdir) else workdir
            if real in seen:
                continue
            seen.add(real)
            result = read_run(workdir)
            if isinstance(result, str):
                log(f"skipping run {_name(workdir)} ({workdir}): {result}")
            else:
                runs.append(result)
        for message in missing_runs(dirs, [root]):
            log(message)
    return runs


def missing_runs(workdirs: Sequence[str], roots: Sequence[str] = ()) -> list[str]:
    """Runs of the sweeps these workdirs belong to that have no folder next to them (a sweep cut
    short before starting them), from the sweep manifests in `roots` and in the workdirs' parents."""
    parents = {_parent(w) for w in workdirs} | set(roots)
    messages = []
    for parent in sorted(parents):
        for manifest in workdir_lib.read_sweep_manifests(parent):
            for run in manifest.get("runs", []):
                if not workdir_lib.path(parent, run).is_dir():
                    messages.append(
                        f"missing run {run} of sweep {manifest.get('sweep')}: no workdir {workdir_lib.path(parent, run)}"
                    )
    return messages


# ---------------------------------------------------------------------------------------------
# Loading: wandb


def parse_wandb_path(path: str) -> tuple[str, str | None]:
    """`[ENTITY/]PROJECT[:GROUP]` (or `ENTITY/PROJECT/GROUP`) -> (`[ENTITY/]PROJECT`, GROUP)."""
    project, _, group = path.partition(":")
    parts = [p for p in project.split("/") if p]
    if len(parts) == 3 and not group:
        parts, group = parts[:2], parts[2]
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise AnalysisError(f"--wandb {path!r}: expected [ENTITY/]PROJECT[:GROUP]")
    return "/".join(parts), group or None


def _require_online() -> None:
    """wandb's server must answer: offline there is nothing to read (the runs' local files are)."""
    mode = os.environ.get("WANDB_MODE", "")
    if mode in ("offline", "disabled", "dryrun"):
        raise AnalysisError(
            f"--wandb reads runs from the wandb server, but WANDB_MODE={mode}: plot the local workdirs "
            "instead (mnv2 plot KIND ROOT ...), or unset WANDB_MODE when online"
        )
    from mnv2_jax.wandb_mode import resolve_mode

    if resolve_mode("auto", timeout=5.0) != "online":
        base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
        raise AnalysisError(
            f"--wandb: offline (no wandb API key, or {base} does not answer): plot the local workdirs "
            "instead (mnv2 plot KIND ROOT ...); `wandb sync` them when online"
        )


def _mapping(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return dict(obj)
    return dict(obj.items())  # wandb's HTTPSummary


def load_wandb(path: str, api: Any = None, log: Callable[[str], None] = _stderr) -> list[Run]:
    """Every finished run of a wandb project (or of one group, the sweep name) as `Run`s.

    `api`: a `wandb.Api()` (default: a new one, after checking that the server answers).
    """
    project, group = parse_wandb_path(path)
    if api is None:
        _require_online()
        import wandb

        try:
            api = wandb.Api(timeout=30)
        except Exception as e:  # noqa: BLE001 - any failure: say it in one line
            raise AnalysisError(f"--wandb: cannot reach wandb ({type(e).__name__}: {e})") from None
    runs = []
    try:
        found = api.runs(project, filters={"group": group} if group else None)
        for wrun in found:
            summary = _mapping(wrun.summary)
            if summary.get("complete") is not True:
                state = getattr(wrun, "state", "?")
                log(f"skipping run {wrun.name} (wandb {project}, state {state}): not complete")
                continue
            records = []
            for row in wrun.scan_history():
                if row.get("_step") is None:
                    continue
                record = {k: v for k, v in row.items() if not k.startswith("_") and v is not None}
                records.append({"step": int(row["_step"]), **record})
            config = _mapping(getattr(wrun, "config", None))
            summary = {k: v for k, v in summary.items() if not k.startswith("_")}
            url = getattr(wrun, "url", None) or f"wandb:{project}/{getattr(wrun, 'id', wrun.name)}"
            runs.append(run_from_records(wrun.name, summary, config, records, source=url))
    except AnalysisError:
        raise
    except Exception as e:  # noqa: BLE001 - network, permissions, unknown project
        raise AnalysisError(f"--wandb {path}: {type(e).__name__}: {e}") from None
    if not runs:
        log(f"wandb {project}" + (f" group {group}" if group else "") + ": no complete runs")
    return runs


# ---------------------------------------------------------------------------------------------
# Aggregation


def _point_name(name: str) -> str:
    return re.sub(r"_s-?\d+(?=_|$)", "", name, count=1)


def aggregate(runs: Sequence[Run], log: Callable[[str], None] = _stderr) -> list[Point]:
    """Group runs that differ only in seed; the same seed twice is reported and kept once."""
    groups: dict[tuple, Point] = {}
    for run in runs:
        key = run.point_key()
        point = groups.get(key)
        if point is None:
            config = {k: run.config.get(k) for k in POINT_KEYS}
            config["params_bn"] = run.config.get("params_bn")
            groups[key] = Point(_point_name(run.name), config, [run])
            continue
        twin = next((r for r in point.runs if r.seed == run.seed), None)
        if twin is not None:
            log(
                f"skipping run {run.name} ({run.source}): same config and seed as {twin.name} ({twin.source})"
            )
            continue
        point.runs.append(run)
    return sorted(groups.values(), key=_sort_key)


def _sort_key(point: Point) -> tuple:
    def norm(v):
        return (0, v) if isinstance(v, (int, float)) else (1, str(v))

    return tuple(norm(point.config.get(k)) for k in ("madds", "width", "resolution", "expansion")) + (
        point.name,
    )


def runs_task(runs: Sequence[Run], what: str) -> str:
    """The one task of `runs` (`DEFAULT_TASK` for none); AnalysisError naming the tasks when they
    mix, since one figure or table compares networks of one task."""
    found = Counter(str(run.config.get("task") or DEFAULT_TASK) for run in runs)
    if len(found) > 1:
        listed = ", ".join(f"{task} ({n} run{'s' * (n > 1)})" for task, n in sorted(found.items()))
        raise AnalysisError(
            f"{what}: the runs are of several tasks: {listed}; give the roots of one task at a time"
        )
    return next(iter(found), DEFAULT_TASK)


def task_metric(task: str) -> str:
    """The default metric of `task`: its evaluator's main value for the EMA weights."""
    if task not in TASK_METRICS:
        raise AnalysisError(f"task {task!r}: no plots for it; known tasks: {', '.join(TASK_METRICS)}")
    return f"eval_ema/{TASK_METRICS[task]}"


def choose_metric(points: Sequence[Point], metric: str, log: Callable[[str], None] = _stderr) -> str:
    """`metric`; an EMA metric (`eval_ema/...`) falls back to the raw weights' (`eval/...`) when no
    run has EMA values (EMA off)."""
    runs = [r for p in points for r in p.runs]
    if metric.startswith("eval_ema/") and runs and not any(metric in r.metrics for r in runs):
        raw = "eval/" + metric.split("/", 1)[1]
        log(f"no run has {metric} (EMA off?): using {raw}")
        return raw
    return metric


def require_metric(points: Sequence[Point], metric: str) -> None:
    """AnalysisError naming `--metric` and the final eval values the runs hold when none has `metric`."""
    runs = [r for p in points for r in p.runs]
    if runs and not any(_is_number(r.metrics.get(metric)) for r in runs):
        held = sorted(
            {k for r in runs for k in r.metrics if "/" in k and "time" not in k and "/iou/" not in k}
        )
        raise AnalysisError(
            f"--metric {metric}: no run has it; the runs have {', '.join(held) or 'no eval values'}"
        )


def with_metric(points: Sequence[Point], metric: str, log: Callable[[str], None] = _stderr) -> list[Point]:
    """The points whose runs have `metric` (runs without it are reported and left out)."""
    out = []
    for point in points:
        kept = []
        for run in point.runs:
            if _is_number(run.metrics.get(metric)):
                kept.append(run)
            else:
                log(f"skipping run {run.name} ({run.source}): no {metric} in its summary")
        if kept:
            out.append(dataclasses.replace(point, runs=kept))
    return out
