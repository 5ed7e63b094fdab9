"""The paper's figures from aggregated runs: Figure 5, Figure 6a/b and an expansion curve for
classification; COCO AP (detection, Table 6's networks) and mIOU (segmentation, Table 7's)
against multiply-adds.

Figures are `matplotlib.figure.Figure`s built without pyplot (no global state, any backend; a
notebook shows them with `display(fig)`), saved as PNG and SVG; `make` also writes the table
(`mnv2_jax.analysis.tables`). numpy and matplotlib load when a function needs them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mnv2_jax import workdir as workdir_lib
from mnv2_jax.analysis.records import (
    COUNT_KEYS,
    DEFAULT_METRIC,
    KIND_TASKS,
    KINDS,
    POINT_KEYS,
    AnalysisError,
    Point,
    Run,
    _fmt,
    _number,
    _stderr,
    aggregate,
    choose_metric,
    require_metric,
    runs_task,
    task_metric,
    with_metric,
)
from mnv2_jax.analysis.tables import table_csv, table_markdown, task_table_csv, task_table_markdown

if TYPE_CHECKING:  # matplotlib loads when a figure is drawn
    from matplotlib.figure import Figure

# The paper's legends (Figure 6).
ACTIVATION_LABELS = {"linear": "Linear bottleneck", "relu6": "ReLU6 in bottleneck"}
RESIDUAL_LABELS = {
    "bottleneck": "Shortcut between bottlenecks",
    "expansion": "Shortcut between expansions",
    "none": "No residual",
}
HEAD_LABELS = {"ssdlite": "SSDLite", "ssd": "SSD"}
# The kinds that plot each task's runs, for the message when a kind is given another task's runs.
TASK_KINDS = {
    "classification": "`mnv2 plot fig5` (fig6a, fig6b, expansion)",
    "detection": "`mnv2 plot ap`",
    "segmentation": "`mnv2 plot miou`",
}


# ---------------------------------------------------------------------------------------------
# Labels


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
    if key == "head":
        return HEAD_LABELS.get(value, f"head {value}")
    if key == "output_stride":
        return f"OS{value}"
    if key == "aspp":
        return "ASPP" if value else "no ASPP"
    if key == "eval_scales":
        return (
            "single scale" if tuple(value or (1.0,)) == (1.0,) else "MF " + "/".join(_fmt(v) for v in value)
        )
    if key == "eval_flip":
        return "flip" if value else "no flip"
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


def series(
    points: Sequence[Point], along: str, default: str = "MobileNetV2"
) -> list[tuple[str, list[Point]]]:
    """Points grouped into curves along `along` (every other axis fixed), each labelled by the
    axes that differ between curves (`default` when none does); within a curve the points are
    sorted by `along`."""
    groups: dict[tuple, list[Point]] = {}
    for point in points:
        key = tuple((k, point.config.get(k)) for k in POINT_KEYS if k not in COUNT_KEYS and k != along)
        groups.setdefault(key, []).append(point)
    keys = varying_keys(points, exclude=(along,))
    out = []
    for members in groups.values():
        members.sort(key=lambda p: p.config.get(along))
        label = ", ".join(label_part(k, members[0].config.get(k)) for k in keys) or default
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
    names = {
        "top1": "Top-1 accuracy",
        "top5": "Top-5 accuracy",
        "AP": "COCO AP",
        "AP50": "COCO AP50",
        "AP75": "COCO AP75",
        "miou": "mIOU",
    }
    what = names.get(metric.rsplit("/", 1)[-1], metric)
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
    "ap": ("network", "sweeps/detection.py"),
    "miou": ("network", "sweeps/segmentation.py"),
}
# The figures of one metric against multiply-adds: what they need is two points.
MADDS_FIGURES = {
    "fig5": "Figure 5 needs runs at two or more widths or resolutions",
    "ap": "the figure needs two or more networks (widths, resolutions or heads)",
    "miou": "the figure needs two or more networks (widths, output strides, ASPP or eval modes)",
}


def require_subject(kind: str, points: Sequence[Point], source: str = "the runs") -> None:
    """Raise AnalysisError (one line: what `source` lacks, which sweep file produces it) unless
    `points` hold at least two values of what figure `kind` compares (for fig5, ap, miou: two points)."""
    if kind not in SUBJECTS or not points:
        return
    subject, sweep_file = SUBJECTS[kind]
    if kind in MADDS_FIGURES:
        values = {(p.config.get("width"), p.config.get("resolution")) for p in points}
        found = ", ".join(f"{_fmt(w)}/{_fmt(r)}" for w, r in sorted(values, key=str))
        if len(points) < 2:
            raise AnalysisError(
                f"{kind}: {source} holds one point ({found}); {MADDS_FIGURES[kind]}, as {sweep_file} makes"
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


def _plot_reference(ax, reference: str, along: str) -> list[float]:
    """The published points of `reference` as a grey series under the runs: one dashed curve per
    resolution (`along` = 'width') or per width, its fixed value written at its right end.
    Returns their multiply-adds (millions) for the axis range."""
    from mnv2_jax.analysis import published

    rows = published.reference(reference)
    fixed = "resolution" if along == "width" else "width"
    groups: dict[Any, list[published.Published]] = {}
    for row in rows:
        groups.setdefault(getattr(row, fixed), []).append(row)
    for i, (value, members) in enumerate(sorted(groups.items(), reverse=True)):
        members.sort(key=lambda r: r.madds_millions)
        x = [r.madds_millions for r in members]
        y = [r.top1 for r in members]
        label = f"published: {published.SOURCE.split(' (')[0]}, ImageNet" if i == 0 else None
        ax.plot(x, y, ls="--", lw=0.8, color="0.55", marker="o", ms=4, mfc="white", label=label, zorder=1)
        text = f"{value}" if fixed == "resolution" else f"×{_fmt(value)}"
        ax.annotate(text, (x[-1], y[-1]), textcoords="offset points", xytext=(4, 2), fontsize=6, color="0.45")
    return [r.madds_millions for r in rows]


def _madds_panel(ax, points: Sequence[Point], metric: str, along: str, default: str = "MobileNetV2") -> None:
    """`metric` (%, mean ± std over seeds) against multiply-adds in millions, one curve per
    `series(points, along)`, each point labelled by its value of `along` (×width or resolution)."""
    import matplotlib as mpl

    curves = series(points, along, default)
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
            ax.annotate(text, (xi, yi), textcoords="offset points", xytext=(5, -9), fontsize=7, color=color)


def plot_fig5(points: Sequence[Point], metric: str = DEFAULT_METRIC, reference: str | None = None):
    """Figure 5: top-1 against multiply-adds (log scale); left one curve per resolution (width
    varies along it), right one per width (resolution varies); every point labelled width/res.

    `reference` ('paper'): the published points (`mnv2_jax.analysis.published`) drawn in grey
    beneath the runs, on the same axes; the title says when the runs are on another dataset."""
    _need(points, "fig5")
    require_subject("fig5", points)
    fig, (left, right) = _figure(13, 5.2, ncols=2, sharey=True)
    for ax, along, title in (
        (left, "width", "One curve per resolution (points: width multiplier)"),
        (right, "resolution", "One curve per width (points: resolution)"),
    ):
        _madds_panel(ax, points, metric, along)
        reference_madds = _plot_reference(ax, reference, along) if reference else []
        _log_millions(ax, [p.config["madds"] / 1e6 for p in points] + reference_madds)
        ax.margins(x=0.08)
        ax.set_xlabel("Multiply-adds, millions (log scale)")
        ax.set_title(title, fontsize=11)
        ax.legend(fontsize=8, loc="best" if reference else "lower right")  # not over the grey points
        ax.grid(True, which="both", alpha=0.3)
    _percent_axis(left, metric)
    n_seeds = max(len(p.runs) for p in points)
    title = "MobileNetV2: accuracy vs multiply-adds (Figure 5)" + (
        f"; mean ± std over up to {n_seeds} seeds" if n_seeds > 1 else ""
    )
    if reference:
        from mnv2_jax.analysis import published

        datasets = sorted({str(p.config.get("dataset")) for p in points})
        title += (
            f"\ncolour: these runs ({', '.join(datasets)}); grey: {published.SOURCE.split(' (')[0]} "
            f"({published.DATASET}, as published)"
        )
        if any(d.split(":")[0] != published.DATASET for d in datasets):
            title += "\ndifferent datasets: compare the trends, not the values"
    fig.suptitle(title, fontsize=11 if reference else None)
    return fig


# Per task: the network named in a curve's label when no setting differs, and the figure's title.
TASK_FIGURES = {
    "detection": ("SSDLite", "MobileNetV2 + SSDLite: COCO AP vs multiply-adds (Table 6's networks)"),
    "segmentation": ("DeepLabv3", "Mobile DeepLabv3: mIOU vs multiply-adds (Table 7's networks)"),
}


def plot_task(points: Sequence[Point], task: str, metric: str | None = None) -> Figure:
    """A detection or segmentation metric (COCO AP, mIOU; default: `task_metric(task)`) against
    multiply-adds (log scale). One curve per setting that differs between the points (head;
    output stride, ASPP, eval scales and flip; resolution) with the width varying along it; a
    second panel with the resolution varying along each curve when the runs sweep it too."""
    kind = "ap" if task == "detection" else "miou"
    if task not in TASK_FIGURES:
        raise AnalysisError(
            f"task {task!r}: no metric-vs-multiply-adds figure; tasks: {', '.join(TASK_FIGURES)}"
        )
    metric = metric or task_metric(task)
    _need(points, kind)
    require_subject(kind, points)
    default, title = TASK_FIGURES[task]
    # A panel per axis that some curve runs along (two points or more); width when none does.
    panels = [a for a in ("width", "resolution") if any(len(m) > 1 for _, m in series(points, a))] or [
        "width"
    ]
    fig, axes = _figure(6.5 * len(panels), 5.2, ncols=len(panels), sharey=True)
    for ax, along in zip(axes, panels):
        _madds_panel(ax, points, metric, along, default)
        _log_millions(ax, [p.config["madds"] / 1e6 for p in points])
        ax.margins(x=0.08)
        ax.set_xlabel("Multiply-adds, millions (log scale)")
        if len(panels) > 1:
            fixed = "resolution" if along == "width" else "width"
            ax.set_title(f"One curve per {fixed} (points: {along})", fontsize=11)
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(True, which="both", alpha=0.3)
    _percent_axis(axes[0], metric)
    n_seeds = max(len(p.runs) for p in points)
    if n_seeds > 1:
        title += f"; mean ± std over up to {n_seeds} seeds"
    if any(len(p.config.get("eval_scales") or ()) > 1 or p.config.get("eval_flip") for p in points):
        title += "\nmulti-scale and flip evaluation: multiply-adds of one pass"
    fig.suptitle(title)
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
    records = workdir_lib.read_metrics(source) if isinstance(source, str) else list(source)
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
# Writing


PLOTTERS = {"fig5": plot_fig5, "fig6a": plot_fig6a, "fig6b": plot_fig6b, "expansion": plot_expansion}


def save_figure(fig, out: str, stem: str) -> list[str]:
    """PNG and SVG of `fig` in `out` (a local folder or gs://)."""
    workdir_lib.path(out).mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        path = str(workdir_lib.path(out, f"{stem}.{ext}"))
        buffer = io.BytesIO()
        fig.savefig(
            buffer,
            format=ext,
            dpi=150 if ext == "png" else None,
            metadata={"Date": None} if ext == "svg" else None,
        )
        workdir_lib.path(path).write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def make(
    kind: str,
    runs: Sequence[Run],
    out: str,
    metric: str | None = None,
    log: Callable[[str], None] = _stderr,
    source: str = "the runs",
    reference: str | None = None,
) -> list[str]:
    """Aggregate `runs` and write one figure (PNG + SVG) or the table (Markdown + CSV) into `out`.

    The runs must be of one task, the one `kind` draws (`KIND_TASKS`; the table: any); the table
    is that task's (Table 4, 6 or 7). `metric` (default: the task's, `task_metric`) falls back to
    the raw weights when no run has EMA values. A figure whose subject the runs do not vary is
    refused (`require_subject`; `source` names where the runs came from in the message).
    `reference` ('paper', classification's fig5 and table only) adds the published results."""
    if kind not in KINDS:
        raise AnalysisError(f"unknown plot {kind!r}; choose from {', '.join(KINDS)}")
    task = runs_task(runs, kind)
    task_metric(task)  # a task without plots fails here, naming the known ones
    wanted = KIND_TASKS.get(kind)
    if runs and wanted and task != wanted:
        raise AnalysisError(
            f"{kind} draws {wanted} runs, but {source} holds {task} runs: for those, use "
            f"{TASK_KINDS.get(task, 'no figure')} or `mnv2 plot table`"
        )
    if reference is not None:
        from mnv2_jax.analysis import published

        if kind not in ("fig5", "table"):
            raise AnalysisError(f"--reference applies to fig5 and table, not {kind}")
        if task != "classification":
            raise AnalysisError(f"--reference {reference}: published ImageNet top-1, not for {task} runs")
        published.reference(reference)  # an unknown name fails here, naming the known ones
    points = aggregate(runs, log=log)
    if kind == "table":
        if not points:
            raise AnalysisError("table: no complete runs")
        workdir_lib.path(out).mkdir(parents=True, exist_ok=True)
        paths = [str(workdir_lib.path(out, name)) for name in ("table.md", "table.csv")]
        if task == "classification":  # Table 4 shows both the EMA and the raw weights' top-1
            texts = (table_markdown(points, reference), table_csv(points, reference))
        else:  # the weights of the chosen metric: EMA, or raw with --metric eval/... or EMA off
            metric = choose_metric(points, metric or task_metric(task), log=log)
            require_metric(points, metric)
            prefix = metric.split("/", 1)[0]
            texts = (task_table_markdown(points, task, prefix), task_table_csv(points, task, prefix))
        for path, text in zip(paths, texts):
            workdir_lib.write_text(path, text)
        return paths
    require_subject(kind, points, source)
    metric = choose_metric(points, metric or task_metric(task), log=log)
    require_metric(points, metric)
    chosen = with_metric(points, metric, log=log)
    if kind in ("ap", "miou"):
        fig = plot_task(chosen, task, metric)
    else:
        fig = plot_fig5(chosen, metric, reference) if reference else PLOTTERS[kind](chosen, metric)
    return save_figure(fig, out, kind)
