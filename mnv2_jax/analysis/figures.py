"""Plots and tables from finished runs: the paper's Figure 5, Figure 6a/b, an expansion curve, Table 4.

    mnv2 plot fig5 runs/width_resolution [ROOT ...] [--out DIR] [--metric eval/top1]
    mnv2 plot fig6a runs/bottleneck_activation
    mnv2 plot table runs/width_resolution runs/expansion
    mnv2 plot fig6b --wandb ENTITY/mnv2_jax-imagenet:residual

Two layers, one direction (analysis reads only what runs wrote):

* loaders turn a source into a list of `Run` records -- `load_runs(roots)` from run
  workdirs (`summary.json` + `metrics.jsonl`; a root is a run directory or holds them, a
  level or two down), `load_wandb(path)` from the wandb server (each run's summary and
  history) -- the same records either way;
* `aggregate(runs)` merges runs that differ only in seed into `Point`s (mean and sample
  standard deviation over seeds), and the plotters and the table read points.

A run without `summary.json`, or whose summary does not say `"complete": true`, is not
plotted: it is reported on stderr by name (with how far it got) and skipped, so a half
finished sweep never silently loses a point; so are the runs of a sweep that never started
(a run's `sweep.json` names its sweep file; runs of it without a workdir are listed). Top-1 is
that of the EMA weights (`eval_ema/top1`) unless `metric` says otherwise (`eval/top1`: raw).

Figures are `matplotlib.figure.Figure`s built without pyplot (no global state, any
backend; a notebook shows them with `display(fig)`), saved as PNG and SVG.
This module imports only the standard library at load time (the CLI builds its parser
from it); numpy and matplotlib load when a function needs them.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

KINDS = ("fig5", "fig6a", "fig6b", "expansion", "table")
DEFAULT_METRIC = "eval_ema/top1"
RAW_METRIC = "eval/top1"
SUMMARY_FILE = "summary.json"  # written by mnv2_jax.train.writer
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
THROUGHPUT_KEY = "train/images_per_sec"

# What makes a point of a sweep: runs that agree on all of these (and differ at most in
# seed) are seeds of one point. madds/params guard against merging different networks.
POINT_KEYS = (
    "dataset",
    "width",
    "resolution",
    "expansion",
    "bottleneck_activation",
    "residual",
    "output_stride",
    "max_repeats",
    "recipe",
    "total_steps",
    "madds",
    "params",
)
COUNT_KEYS = ("madds", "params", "params_bn")
CONFIG_KEYS = (*POINT_KEYS, "seed", "params_bn")
# Files or directories that mark a run directory (a sweep creates sweep.json before training).
RUN_MARKERS = (SUMMARY_FILE, METRICS_FILE, CONFIG_FILE, "sweep.json", "checkpoints", "train.log")
NOT_RUNS = ("plots", "checkpoints", "wandb", "export", "profile")

# The paper's legends (Figure 6).
ACTIVATION_LABELS = {"linear": "Linear bottleneck", "relu6": "ReLU6 in bottleneck"}
RESIDUAL_LABELS = {
    "bottleneck": "Shortcut between bottlenecks",
    "expansion": "Shortcut between expansions",
    "none": "No residual",
}


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
    if key in ("resolution", "seed", "total_steps", "output_stride", "max_repeats", *COUNT_KEYS):
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
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
    run_config = {}
    for key in CONFIG_KEYS:
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


def _is_run_dir(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, marker)) for marker in RUN_MARKERS)


def find_run_dirs(root: str, depth: int = 2) -> list[str]:
    """`root` itself if it is a run directory, else the run directories below it (sorted)."""
    if not os.path.isdir(root):
        raise AnalysisError(f"{root}: no such directory")
    if _is_run_dir(root):
        return [root]
    found = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith(".") or name in NOT_RUNS or not os.path.isdir(path):
            continue
        if _is_run_dir(path):
            found.append(path)
        elif depth > 1:
            found.extend(find_run_dirs(path, depth - 1))
    return found


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    """Complete lines of a metrics log (a run being written may end in a partial line)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def _progress(records: list[dict[str, Any]], config: dict[str, Any]) -> str:
    steps = [r["step"] for r in records if isinstance(r.get("step"), (int, float))]
    total = config.get("total_steps")
    if not steps:
        return "nothing logged yet"
    return f"last logged step {max(steps)}" + (f" of {total}" if total else "")


def read_run(workdir: str) -> Run | str:
    """The `Run` of a finished workdir, or the reason it is not one (a string)."""
    name = os.path.basename(os.path.normpath(workdir))
    config = {}
    config_path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(config_path):
        try:
            config = _read_json(config_path)
        except (OSError, json.JSONDecodeError):
            config = {}
    records = _read_jsonl(os.path.join(workdir, METRICS_FILE))
    summary_path = os.path.join(workdir, SUMMARY_FILE)
    if not os.path.exists(summary_path):
        return f"no {SUMMARY_FILE} ({_progress(records, config)})"
    try:
        summary = _read_json(summary_path)
    except (OSError, json.JSONDecodeError) as e:
        return f"unreadable {SUMMARY_FILE} ({e})"
    if summary.get("complete") is not True:
        return f"not complete ({SUMMARY_FILE} has complete={summary.get('complete')!r}; {_progress(records, {**config, **summary})})"
    return run_from_records(name, summary, config, records, source=os.path.abspath(workdir))


def load_runs(roots: Sequence[str], log: Callable[[str], None] = _stderr) -> list[Run]:
    """Every finished run under `roots`; unfinished or broken ones are reported through `log`."""
    runs, seen = [], set()
    for root in roots:
        dirs = find_run_dirs(root)
        if not dirs:
            log(f"{root}: no run directories found")
        for workdir in dirs:
            real = os.path.realpath(workdir)
            if real in seen:
                continue
            seen.add(real)
            result = read_run(workdir)
            if isinstance(result, str):
                log(f"skipping run {os.path.basename(os.path.normpath(workdir))} ({workdir}): {result}")
            else:
                runs.append(result)
        for message in missing_runs(dirs):
            log(message)
    return runs


def missing_runs(workdirs: Sequence[str]) -> list[str]:
    """Runs of the sweeps these workdirs belong to (their `sweep.json` names the sweep file) that
    have no workdir next to them: a sweep cut short before starting them."""
    by_parent: dict[tuple[str, str], str] = {}
    for workdir in workdirs:
        try:
            record = _read_json(os.path.join(workdir, "sweep.json"))
        except (OSError, json.JSONDecodeError):
            continue
        path = record.get("sweep_file")
        if isinstance(path, str):
            by_parent.setdefault(
                (os.path.dirname(os.path.normpath(workdir)), path), record.get("sweep", path)
            )
    messages = []
    for (parent, path), name in sorted(by_parent.items()):
        try:
            from mnv2_jax.sweeps import sweep_file as sweeps

            expected = [run.name for run in sweeps.load_sweep(path).runs]
        except Exception as e:  # noqa: BLE001 - a moved or edited sweep file: say so, go on
            messages.append(f"sweep {name}: cannot check for runs not started ({path}: {e})")
            continue
        for run in expected:
            if not os.path.isdir(os.path.join(parent, run)):
                messages.append(f"missing run {run} of sweep {name}: no workdir {os.path.join(parent, run)}")
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
    from mnv2_jax.train.writer import _wandb_mode

    if _wandb_mode("auto", timeout=5.0) != "online":
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


def choose_metric(points: Sequence[Point], metric: str, log: Callable[[str], None] = _stderr) -> str:
    """`metric`; the default (EMA) falls back to the raw weights' top-1 when no run has EMA values."""
    runs = [r for p in points for r in p.runs]
    if metric == DEFAULT_METRIC and runs and not any(DEFAULT_METRIC in r.metrics for r in runs):
        log(f"no run has {DEFAULT_METRIC} (EMA off?): using {RAW_METRIC}")
        return RAW_METRIC
    return metric


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


# ---------------------------------------------------------------------------------------------
# Labels


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "-".join(_fmt(v) for v in value)
    return str(value)


def label_part(key: str, value: Any) -> str:
    if key == "width":
        return f"width {_fmt(value)}"
    if key == "resolution":
        return f"{value}px"
    if key == "expansion":
        return f"t={_fmt(value)}"
    if key == "bottleneck_activation":
        return ACTIVATION_LABELS.get(value, f"{value} bottleneck")
    if key == "residual":
        return RESIDUAL_LABELS.get(value, f"residual {value}")
    if key == "total_steps":
        return f"{value} steps"
    return f"{key}={_fmt(value)}"


def varying_keys(points: Sequence[Point], exclude: Sequence[str] = ()) -> list[str]:
    """The POINT_KEYS (but MAdds/params) whose values differ between `points`."""
    keys = []
    for key in POINT_KEYS:
        if key in COUNT_KEYS or key in exclude:
            continue
        if len({json.dumps(p.config.get(key), default=repr) for p in points}) > 1:
            keys.append(key)
    return keys


def series(points: Sequence[Point], along: str) -> list[tuple[str, list[Point]]]:
    """Points grouped into curves along `along` (every other axis fixed), each labelled by the
    axes that differ between curves; within a curve the points are sorted by `along`."""
    groups: dict[tuple, list[Point]] = {}
    for point in points:
        key = tuple((k, point.config.get(k)) for k in POINT_KEYS if k not in COUNT_KEYS and k != along)
        groups.setdefault(key, []).append(point)
    keys = varying_keys(points, exclude=(along,))
    out = []
    for members in groups.values():
        members.sort(key=lambda p: p.config.get(along))
        label = ", ".join(label_part(k, members[0].config.get(k)) for k in keys) or "MobileNetV2"
        out.append((label, members))
    return out


def _log_millions(ax, values: Sequence[float]) -> None:
    """A log x axis with plain-number ticks (10, 20, 50, 100, ...) over the data's range."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_xscale("log")
    lo, hi = min(values), max(values)
    ticks = [round(m * 10.0**e, 6) for e in range(-3, 6) for m in (1, 2, 5)]
    ticks = [t for t in ticks if lo / 1.5 <= t <= hi * 1.5]
    if len(ticks) >= 2:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def _percent_axis(ax, metric: str) -> None:
    weights = "EMA weights" if metric.startswith("eval_ema") else "raw weights"
    what = {"top1": "Top-1 accuracy", "top5": "Top-5 accuracy"}.get(metric.rsplit("/", 1)[-1], metric)
    ax.set_ylabel(f"{what}, % ({weights})")
    ax.grid(True, which="both", alpha=0.3)


# ---------------------------------------------------------------------------------------------
# Figures


def _figure(width: float, height: float, ncols: int = 1, sharey: bool = False):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, sharey=sharey, squeeze=False)[0]
    return fig, list(axes)


def _need(points: Sequence[Point], what: str) -> None:
    if not points:
        raise AnalysisError(f"{what}: no complete runs to plot")


# What each figure compares, the values it needs at least two of, and the sweep file whose
# runs provide them: a figure of one value draws a degenerate plot, so it is refused instead.
SUBJECTS = {
    "fig5": ("width or resolution", "sweeps/width_resolution.py (or sweeps/smoke.py)"),
    "fig6a": ("bottleneck_activation", "sweeps/bottleneck_activation.py"),
    "fig6b": ("residual", "sweeps/residual.py"),
    "expansion": ("expansion", "sweeps/expansion.py"),
}


def require_subject(kind: str, points: Sequence[Point], source: str = "the runs") -> None:
    """Raise AnalysisError (one line: what `source` lacks, which sweep file produces it) unless
    `points` hold at least two values of what figure `kind` compares (for fig5: two points)."""
    if kind not in SUBJECTS or not points:
        return
    subject, sweep_file = SUBJECTS[kind]
    if kind == "fig5":
        values = {(p.config.get("width"), p.config.get("resolution")) for p in points}
        found = ", ".join(f"{_fmt(w)}/{_fmt(r)}" for w, r in sorted(values, key=str))
        if len(points) < 2:
            raise AnalysisError(
                f"fig5: {source} holds one point ({found}); Figure 5 needs runs at two or more "
                f"widths or resolutions, as {sweep_file} makes"
            )
        return
    values = {p.config.get(subject) for p in points}
    if kind == "expansion":
        values = {v for v in values if isinstance(v, float)}
    if len(values) < 2:
        found = ", ".join(repr(v) for v in sorted(values, key=str)) or "none"
        raise AnalysisError(
            f"{kind}: every run in {source} has the same {subject} ({found}); the figure compares "
            f"two or more, as {sweep_file} makes"
        )


def plot_fig5(points: Sequence[Point], metric: str = DEFAULT_METRIC):
    """Figure 5: top-1 against multiply-adds (log scale); left one curve per resolution (width
    varies along it), right one per width (resolution varies); every point labelled width/res."""
    import matplotlib as mpl

    _need(points, "fig5")
    require_subject("fig5", points)
    fig, (left, right) = _figure(13, 5.2, ncols=2, sharey=True)
    for ax, along, title in (
        (left, "width", "One curve per resolution (points: width multiplier)"),
        (right, "resolution", "One curve per width (points: resolution)"),
    ):
        curves = series(points, along)
        colors = mpl.colormaps["viridis" if along == "width" else "plasma"]
        for i, (label, members) in enumerate(curves):
            color = colors(0.8 * i / max(len(curves) - 1, 1))
            x = [p.config["madds"] / 1e6 for p in members]
            stats = [p.stat(metric) for p in members]
            y = [100 * s.mean for s in stats]
            err = [100 * s.std for s in stats]
            ax.errorbar(x, y, yerr=err, marker="o", ms=5, capsize=3, color=color, label=label, lw=1.5)
            for p, xi, yi in zip(members, x, y):
                # The value that varies along the curve (the legend gives the fixed one).
                text = f"×{_fmt(p.config['width'])}" if along == "width" else f"{p.config['resolution']}"
                ax.annotate(
                    text, (xi, yi), textcoords="offset points", xytext=(5, -9), fontsize=7, color=color
                )
        _log_millions(ax, [p.config["madds"] / 1e6 for p in points])
        ax.margins(x=0.08)
        ax.set_xlabel("Multiply-adds, millions (log scale)")
        ax.set_title(title, fontsize=11)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(True, which="both", alpha=0.3)
    _percent_axis(left, metric)
    n_seeds = max(len(p.runs) for p in points)
    fig.suptitle(
        "MobileNetV2: accuracy vs multiply-adds (Figure 5)"
        + (f"; mean ± std over up to {n_seeds} seeds" if n_seeds > 1 else "")
    )
    return fig


def plot_curves(
    points: Sequence[Point],
    metric: str = DEFAULT_METRIC,
    along: str = "bottleneck_activation",
    title: str = "Eval accuracy through training",
    what: str = "curves",
):
    """`metric` against the training step, one curve per point (mean over seeds, ± std band),
    labelled by `along` and by every other axis that differs between the points."""
    _need(points, what)
    fig, (ax,) = _figure(7.5, 5)
    points = sorted(points, key=lambda p: str(p.config.get(along)))
    if along == "residual":
        order = list(RESIDUAL_LABELS)
        points = sorted(points, key=lambda p: order.index(p.config[along]) if p.config[along] in order else 9)
    keys = [along] + varying_keys(points, exclude=(along,))
    plotted = 0
    for point in points:
        steps, mean, std = point.curve(metric)
        if len(steps) == 0:
            _stderr(f"{what}: {point.name} logged no {metric} during training; not drawn")
            continue
        label = ", ".join(label_part(k, point.config.get(k)) for k in keys)
        if len(point.runs) > 1:
            label += f" ({len(point.runs)} seeds)"
        (line,) = ax.plot(steps, 100 * mean, marker="." if len(steps) < 30 else None, label=label, lw=1.8)
        if len(point.runs) > 1:
            ax.fill_between(steps, 100 * (mean - std), 100 * (mean + std), color=line.get_color(), alpha=0.2)
        plotted += 1
    if not plotted:
        raise AnalysisError(f"{what}: no run logged {metric} during training")
    ax.set_xlabel("Training step")
    _percent_axis(ax, metric)
    ax.set_title(title)
    ax.legend(loc="lower right")
    return fig


def plot_fig6a(points: Sequence[Point], metric: str = DEFAULT_METRIC):
    """Figure 6a: eval top-1 through training, linear bottleneck vs ReLU6 in the bottleneck."""
    require_subject("fig6a", points)
    return plot_curves(
        points, metric, "bottleneck_activation", "Impact of non-linearity (Figure 6a)", "fig6a"
    )


def plot_fig6b(points: Sequence[Point], metric: str = DEFAULT_METRIC):
    """Figure 6b: eval top-1 through training for the three residual variants."""
    require_subject("fig6b", points)
    return plot_curves(points, metric, "residual", "Impact of residual connections (Figure 6b)", "fig6b")


def plot_expansion(points: Sequence[Point], metric: str = DEFAULT_METRIC):
    """Top-1 against the expansion ratio t, one curve per width (and per any other axis that varies)."""
    scalar = [p for p in points if isinstance(p.config.get("expansion"), float)]
    for p in points:
        if p not in scalar:
            _stderr(
                f"expansion: {p.name} has per-row expansion ratios {p.config.get('expansion')}; not drawn"
            )
    _need(scalar, "expansion")
    require_subject("expansion", scalar)
    fig, (ax,) = _figure(7.5, 5)
    for label, members in series(scalar, "expansion"):
        x = [p.config["expansion"] for p in members]
        stats = [p.stat(metric) for p in members]
        ax.errorbar(
            x,
            [100 * s.mean for s in stats],
            yerr=[100 * s.std for s in stats],
            marker="o",
            capsize=3,
            label=label,
        )
        for p, xi, s in zip(members, x, stats):
            ax.annotate(
                f"{p.config['madds'] / 1e6:.0f}M"
                if p.config["madds"] >= 1e7
                else f"{p.config['madds'] / 1e6:.2f}M",
                (xi, 100 * s.mean),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
                color="0.35",
            )
    ts = sorted({p.config["expansion"] for p in scalar})
    ax.set_xticks(ts, [_fmt(t) for t in ts])
    ax.margins(x=0.08)
    ax.set_xlabel("Expansion ratio t (labels: multiply-adds)")
    _percent_axis(ax, metric)
    ax.set_title("Accuracy vs expansion ratio")
    ax.legend(loc="lower right")
    return fig


def plot_training(source: str | Sequence[dict[str, Any]]):
    """Loss and top-1 through training of one run (its workdir, or its metrics.jsonl records):
    train values at every log step, eval values (raw and EMA weights) at every eval step."""
    records = _read_jsonl(os.path.join(source, METRICS_FILE)) if isinstance(source, str) else list(source)
    fig, (loss_ax, acc_ax) = _figure(11, 4, ncols=2)
    for key, style in (("train/loss", "-"), ("eval/loss", "o--"), ("eval_ema/loss", "s-")):
        xy = [(r["step"], _number(r[key])) for r in records if key in r]
        if xy:
            loss_ax.plot(*zip(*xy), style, label=key, ms=4)
    for key, style in (("train/top1", "-"), ("eval/top1", "o--"), ("eval_ema/top1", "s-")):
        xy = [(r["step"], 100 * _number(r[key])) for r in records if key in r]
        if xy:
            acc_ax.plot(*zip(*xy), style, label=key, ms=4)
    loss_ax.set_ylabel("loss")
    acc_ax.set_ylabel("top-1, %")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    steps = [r["step"] for r in records if "step" in r]
    fig.suptitle(
        f"{len(records)} records, last step {max(steps)}" if steps else "nothing logged yet", fontsize=10
    )
    return fig


# ---------------------------------------------------------------------------------------------
# Table 4


TABLE_COLUMNS = (
    "name",
    "width",
    "resolution",
    "expansion",
    "bottleneck_activation",
    "residual",
    "dataset",
    "seeds",
    "top1_ema",
    "top1_ema_std",
    "top1",
    "top1_std",
    "params",
    "params_bn",
    "madds",
    "images_per_sec",
)


def table_rows(points: Sequence[Point]) -> list[dict[str, Any]]:
    """One row per point (sorted by MAdds): top-1 of EMA and raw weights (mean, std over seeds, as
    fractions), parameters, multiply-adds and the median measured training images/s."""
    rows = []
    for p in points:
        ema, raw = p.stat(DEFAULT_METRIC), p.stat(RAW_METRIC)
        rows.append(
            {
                "name": p.name,
                "width": p.config.get("width"),
                "resolution": p.config.get("resolution"),
                "expansion": p.config.get("expansion"),
                "bottleneck_activation": p.config.get("bottleneck_activation"),
                "residual": p.config.get("residual"),
                "dataset": p.config.get("dataset"),
                "seeds": len(p.runs),
                "top1_ema": ema.mean if ema.n else None,
                "top1_ema_std": ema.std if ema.n else None,
                "top1": raw.mean if raw.n else None,
                "top1_std": raw.std if raw.n else None,
                "params": p.config.get("params"),
                "params_bn": p.config.get("params_bn"),
                "madds": p.config.get("madds"),
                "images_per_sec": p.images_per_sec(),
            }
        )
    return rows


def table_csv(points: Sequence[Point]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in table_rows(points):
        writer.writerow(
            {k: ("" if v is None else _fmt(v) if isinstance(v, tuple) else v) for k, v in row.items()}
        )
    return out.getvalue()


def _pct(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if n > 1 else "")


def _count(value: Any, unit: str) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    return f"{value / 1e6:.2f}M" if unit == "params" else f"{value / 1e6:.1f}M"


def table_markdown(points: Sequence[Point]) -> str:
    """Table 4 of the paper, for the runs at hand (top-1 in %, mean ± std over seeds)."""
    header = [
        "Network",
        "width",
        "res",
        "t",
        "bottleneck",
        "residual",
        "seeds",
        "Top-1 EMA (%)",
        "Top-1 raw (%)",
        "Params",
        "MAdds",
        "train images/s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 6 + ["---:"] * 6) + "|"]
    for row in table_rows(points):
        n = row["seeds"]
        ips = row["images_per_sec"]
        cells = [
            row["name"],
            _fmt(row["width"]),
            _fmt(row["resolution"]),
            _fmt(row["expansion"]),
            str(row["bottleneck_activation"]),
            str(row["residual"]),
            str(n),
            _pct(row["top1_ema"], row["top1_ema_std"], n),
            _pct(row["top1"], row["top1_std"], n),
            _count(row["params"], "params"),
            _count(row["madds"], "madds"),
            "–" if ips is None else f"{ips:,.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Writing


PLOTTERS = {"fig5": plot_fig5, "fig6a": plot_fig6a, "fig6b": plot_fig6b, "expansion": plot_expansion}


def save_figure(fig, out: str, stem: str) -> list[str]:
    os.makedirs(out, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        path = os.path.join(out, f"{stem}.{ext}")
        fig.savefig(
            path, dpi=150 if ext == "png" else None, metadata={"Date": None} if ext == "svg" else None
        )
        paths.append(path)
    return paths


def make(
    kind: str,
    runs: Sequence[Run],
    out: str,
    metric: str = DEFAULT_METRIC,
    log: Callable[[str], None] = _stderr,
    source: str = "the runs",
) -> list[str]:
    """Aggregate `runs` and write one figure (PNG + SVG) or the table (Markdown + CSV) into `out`.

    A figure whose subject the runs do not vary is refused (`require_subject`; `source` names
    where the runs came from in the message)."""
    if kind not in KINDS:
        raise AnalysisError(f"unknown plot {kind!r}; choose from {', '.join(KINDS)}")
    points = aggregate(runs, log=log)
    if kind == "table":
        if not points:
            raise AnalysisError("table: no complete runs")
        os.makedirs(out, exist_ok=True)
        paths = [os.path.join(out, "table.md"), os.path.join(out, "table.csv")]
        for path, text in zip(paths, (table_markdown(points), table_csv(points))):
            with open(path, "w") as f:
                f.write(text)
        return paths
    require_subject(kind, points, source)
    metric = choose_metric(points, metric, log=log)
    fig = PLOTTERS[kind](with_metric(points, metric, log=log), metric)
    return save_figure(fig, out, kind)


# ---------------------------------------------------------------------------------------------
# Command line: `mnv2 plot KIND ROOT [ROOT ...] [--out DIR] [--wandb PATH] [--metric KEY]`


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "plot",
        help="the paper's figures and Table 4 from run workdirs or wandb",
        description=(
            "fig5: top-1 vs multiply-adds per resolution and per width; fig6a: eval top-1 through "
            "training, linear vs ReLU6 bottleneck; fig6b: the three residual variants; expansion: "
            "top-1 vs expansion ratio per width; table: Table 4 (Markdown + CSV). Runs that differ "
            "only in seed are averaged (mean ± std). Unfinished runs are reported and skipped."
        ),
    )
    p.add_argument("kind", choices=KINDS)
    p.add_argument("roots", nargs="*", metavar="ROOT", help="sweep roots or run workdirs")
    p.add_argument("--out", default=None, help="output directory (default: FIRST_ROOT/plots)")
    p.add_argument(
        "--wandb",
        default=None,
        metavar="[ENTITY/]PROJECT[:GROUP]",
        help="read the runs from wandb (online only); GROUP is the sweep name",
    )
    p.add_argument(
        "--metric", default=DEFAULT_METRIC, help=f"top-1 to plot (default {DEFAULT_METRIC}; or {RAW_METRIC})"
    )
    return p


def main(args: argparse.Namespace) -> list[str]:
    """`mnv2 plot`: load, aggregate, write; prints the written paths."""
    if not args.roots and not args.wandb:
        raise AnalysisError("give at least one ROOT (a sweep root or run workdir) or --wandb PROJECT")
    runs = load_runs(args.roots) if args.roots else []
    if args.wandb:
        runs += load_wandb(args.wandb)
    if args.out:
        out = args.out
    elif args.roots:
        out = os.path.join(args.roots[0], "plots")
    else:
        out = os.path.join("plots", parse_wandb_path(args.wandb)[0].replace("/", "_"))
    source = " ".join([*args.roots, *([f"--wandb {args.wandb}"] if args.wandb else [])])
    paths = make(args.kind, runs, out, metric=args.metric, source=source)
    for path in paths:
        print(path)
    return paths
