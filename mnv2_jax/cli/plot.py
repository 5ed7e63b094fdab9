"""`mnv2 plot KIND ROOT [ROOT ...] [--out DIR] [--wandb PATH] [--metric KEY] [--reference paper]`.

mnv2 plot fig5 runs/width_resolution [ROOT ...] [--out DIR] [--metric eval/top1] [--reference paper]
mnv2 plot fig6a runs/bottleneck_activation
mnv2 plot table runs/width_resolution runs/expansion
mnv2 plot fig6b --wandb ENTITY/mnv2_jax-imagenet:residual
mnv2 plot ap runs/detection; mnv2 plot table runs/detection          # Table 6
mnv2 plot miou runs/segmentation; mnv2 plot table runs/segmentation  # Table 7
"""

from __future__ import annotations

import argparse
import os

# Equal to mnv2_jax.analysis.records.KINDS (tested); the parser does not import the analysis.
KINDS = ("fig5", "fig6a", "fig6b", "expansion", "ap", "miou", "table")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "plot",
        help="the paper's figures and Tables 4, 6, 7 from run workdirs or wandb",
        description=(
            "Classification runs -- fig5: top-1 vs multiply-adds per resolution and per width; "
            "fig6a: eval top-1 through training, linear vs ReLU6 bottleneck; fig6b: the three "
            "residual variants; expansion: top-1 vs expansion ratio per width. Detection runs -- "
            "ap: COCO AP vs multiply-adds, one curve per head (and resolution). Segmentation runs "
            "-- miou: mIOU vs multiply-adds, one curve per output stride / ASPP / eval mode. "
            "table: the runs' task's table, Markdown + CSV (classification: Table 4; detection: "
            "Table 6, AP/AP50/AP75; segmentation: Table 7, mIOU). The runs of one call must be of "
            "one task. Runs that differ only in seed are averaged (mean ± std). Unfinished runs "
            "are reported and skipped."
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
        "--metric",
        default=None,
        help="the eval value to plot (default: the task's, EMA weights: eval_ema/top1, eval_ema/AP or "
        "eval_ema/miou, raw eval/... when EMA is off; e.g. eval/top1, eval_ema/AP50)",
    )
    p.add_argument(
        "--reference",
        default=None,
        choices=("paper",),
        help="fig5 and table of classification runs: add the published ImageNet top-1 of the 22 TF-Slim MobileNetV2 "
        "checkpoints (the paper's width x resolution grid; source in mnv2_jax/analysis/published.py)",
    )
    return p


def main(args: argparse.Namespace) -> list[str]:
    """`mnv2 plot`: load, aggregate, write; prints the written paths."""
    from mnv2_jax.analysis.figures import make
    from mnv2_jax.analysis.records import AnalysisError, load_runs, load_wandb, parse_wandb_path

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
    paths = make(args.kind, runs, out, metric=args.metric, source=source, reference=args.reference)
    for path in paths:
        print(path)
    return paths
