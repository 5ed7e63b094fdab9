"""The paper's tables from aggregated runs, as Markdown and CSV: Table 4 (classification: top-1,
parameters, multiply-adds), Table 6 (detection: COCO AP, AP50, AP75 per head, width and resolution)
and Table 7 (segmentation: mIOU per output stride, ASPP, multi-scale and flip evaluation)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from mnv2_jax.analysis.records import DEFAULT_METRIC, RAW_METRIC, Point, _fmt

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


def table_rows(points: Sequence[Point], reference: str | None = None) -> list[dict[str, Any]]:
    """One row per point (sorted by MAdds): top-1 of EMA and raw weights (mean, std over seeds, as
    fractions), parameters, multiply-adds and the median measured training images/s; with
    `reference`, also `published_top1` (a fraction; None where nothing was published for the
    point's dataset, architecture, width and resolution)."""
    rows = []
    for p in points:
        ema, raw = p.stat(DEFAULT_METRIC), p.stat(RAW_METRIC)
        extra: dict[str, Any] = {}
        if reference:
            from mnv2_jax.analysis import published

            match = published.lookup(p.config, published.reference(reference))
            extra["published_top1"] = None if match is None else match.top1 / 100
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
                **extra,
            }
        )
    return rows


def table_csv(points: Sequence[Point], reference: str | None = None) -> str:
    out = io.StringIO()
    columns = (*TABLE_COLUMNS, "published_top1") if reference else TABLE_COLUMNS
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in table_rows(points, reference):
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


def _published(fraction: float | None) -> str:
    return "–" if fraction is None else f"{100 * fraction:.1f}"  # as published: one decimal


def table_markdown(points: Sequence[Point], reference: str | None = None) -> str:
    """Table 4 of the paper, for the runs at hand (top-1 in %, mean ± std over seeds); with
    `reference`, the published top-1 beside the measured ones and a note naming the source."""
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
    if reference:
        header.insert(9, "Published top-1 (%)")
    align = ["---"] * 6 + ["---:"] * (len(header) - 6)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    rows = table_rows(points, reference)
    for row in rows:
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
            *([_published(row["published_top1"])] if reference else []),
            _count(row["params"], "params"),
            _count(row["madds"], "madds"),
            "–" if ips is None else f"{ips:,.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if reference:
        from mnv2_jax.analysis import published

        matched = sum(row["published_top1"] is not None for row in rows)
        lines.append(
            f"\nPublished top-1: {published.SOURCE}, {published.SOURCE_URL} -- ImageNet validation, given "
            f"only for ImageNet runs of the published architecture at a published width and resolution "
            f"({matched} of {len(rows)} rows here)."
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Tables 6 and 7: one row per point, the metrics of one set of weights (`prefix`: 'eval_ema' or
# 'eval'), as fractions in the CSV and in % in the Markdown.

TASK_TABLES = {
    # task: (columns read from the point's config, metric columns (name, eval key))
    "detection": (
        ("head", "width", "resolution"),
        (("ap", "AP"), ("ap50", "AP50"), ("ap75", "AP75")),
    ),
    "segmentation": (
        ("width", "resolution", "output_stride", "aspp", "eval_scales", "eval_flip"),
        (("miou", "miou"),),
    ),
}
TASK_TITLES = {"detection": "Table 6", "segmentation": "Table 7"}


def task_table_columns(task: str) -> tuple[str, ...]:
    """The CSV columns of `task`'s table."""
    config_keys, metrics = TASK_TABLES[task]
    metric_columns = tuple(c for name, _ in metrics for c in (name, f"{name}_std"))
    return (
        "name",
        *config_keys,
        "dataset",
        "seeds",
        "weights",
        *metric_columns,
        "params",
        "params_bn",
        "madds",
    )


def task_table_rows(points: Sequence[Point], task: str, prefix: str = "eval_ema") -> list[dict[str, Any]]:
    """One row per point (sorted by MAdds) of `task`'s table: the point's head settings, the mean
    and std over seeds of each metric of the `prefix` weights (fractions), the counts."""
    if task not in TASK_TABLES:
        raise ValueError(f"task {task!r}: no table; tables exist for {', '.join(TASK_TABLES)}")
    config_keys, metrics = TASK_TABLES[task]
    rows = []
    for p in points:
        row: dict[str, Any] = {"name": p.name, **{k: p.config.get(k) for k in config_keys}}
        row.update(dataset=p.config.get("dataset"), seeds=len(p.runs), weights=prefix)
        for name, key in metrics:
            stat = p.stat(f"{prefix}/{key}")
            row[name], row[f"{name}_std"] = (stat.mean, stat.std) if stat.n else (None, None)
        row.update({k: p.config.get(k) for k in ("params", "params_bn", "madds")})
        rows.append(row)
    return rows


def task_table_csv(points: Sequence[Point], task: str, prefix: str = "eval_ema") -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=task_table_columns(task), lineterminator="\n")
    writer.writeheader()
    for row in task_table_rows(points, task, prefix):
        writer.writerow(
            {k: ("" if v is None else _fmt(v) if isinstance(v, tuple) else v) for k, v in row.items()}
        )
    return out.getvalue()


def _yes(value: Any) -> str:
    return "–" if value is None else "yes" if value else "no"


def _scales(value: Any) -> str:
    """Multi-scale evaluation: 'no' for the one scale 1.0, else the scales ('0.5/0.75/1')."""
    if not value:
        return "–"
    return "no" if tuple(value) == (1.0,) else "/".join(_fmt(v) for v in value)


def task_table_markdown(points: Sequence[Point], task: str, prefix: str = "eval_ema") -> str:
    """Table 6 (detection) or Table 7 (segmentation) of the paper for the runs at hand: metrics
    in % (mean ± std over seeds), parameters and multiply-adds as the runs counted them."""
    weights = "EMA" if prefix == "eval_ema" else "raw"
    rows = task_table_rows(points, task, prefix)
    if task == "detection":
        header = ["Network", "head", "width", "res", "seeds", f"AP {weights} (%)", "AP50 (%)", "AP75 (%)"]
        header += ["Params", "MAdds"]
        heads = {"ssdlite": "SSDLite", "ssd": "SSD"}
        cells = [
            [
                r["name"],
                heads.get(r["head"], str(r["head"])),
                _fmt(r["width"]),
                _fmt(r["resolution"]),
                str(r["seeds"]),
                *(_pct(r[m], r[f"{m}_std"], r["seeds"]) for m in ("ap", "ap50", "ap75")),
                _count(r["params"], "params"),
                _count(r["madds"], "madds"),
            ]
            for r in rows
        ]
        note = "Params: without batch norm (Table 6 counts so). MAdds at the run's resolution."
    else:
        header = ["Network", "width", "res", "OS", "ASPP", "MF", "flip", "seeds", f"mIOU {weights} (%)"]
        header += ["Params", "MAdds"]
        cells = [
            [
                r["name"],
                _fmt(r["width"]),
                _fmt(r["resolution"]),
                _fmt(r["output_stride"]),
                _yes(r["aspp"]),
                _scales(r["eval_scales"]),
                _yes(r["eval_flip"]),
                str(r["seeds"]),
                _pct(r["miou"], r["miou_std"], r["seeds"]),
                _count(_with_bn(r), "params"),
                _count(r["madds"], "madds"),
            ]
            for r in rows
        ]
        note = (
            "Params: with batch norm (Table 7 counts so). MAdds: one pass at the run's resolution; "
            "multi-scale (MF) and flip evaluation run the network once per scale and flip."
        )
    text_columns = ("Network", "head", "ASPP", "MF", "flip")  # left-aligned; numbers right-aligned
    align = ["---" if column in text_columns else "---:" for column in header]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + f"\n\n{TASK_TITLES[task]} for these runs. {note}\n"


def _with_bn(row: dict[str, Any]) -> int | None:
    params, bn = row.get("params"), row.get("params_bn")
    if not isinstance(params, (int, float)):
        return None
    return params + (bn if isinstance(bn, (int, float)) else 0)
