"""`mnv2 plot KIND ROOT [ROOT ...] [--out DIR] [--wandb PATH] [--metric KEY]`.

mnv2 plot fig5 runs/width_resolution [ROOT ...] [--out DIR] [--metric eval/top1]
mnv2 plot fig6a runs/bottleneck_activation
mnv2 plot table runs/width_resolution runs/expansion
mnv2 plot fig6b --wandb ENTITY/mnv2_jax-imagenet:residual
"""

from __future__ import annotations

import argparse
import os

KINDS = ("fig5", "fig6a", "fig6b", "expansion", "table")
DEFAULT_METRIC = "eval_ema/top1"
RAW_METRIC = "eval/top1"


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
    paths = make(args.kind, runs, out, metric=args.metric, source=source)
    for path in paths:
        print(path)
    return paths
