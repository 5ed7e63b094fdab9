"""Table 4 from aggregated runs: multiply-adds, parameters and top-1 per point (Markdown and CSV)."""

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
