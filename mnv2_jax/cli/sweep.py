"""`mnv2 sweep list|run|launch|export-wandb|train|agent`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


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
    q.add_argument("--sweep-file", default=None, help="the sweep file (for the root's sweep manifest)")

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

    from mnv2_jax.sweeps import sweep_file

    sweep = sweep_file.load_sweep(args.file)
    if command == "list":
        rows = sweep_file.list_runs(sweep)
        if args.json:
            print(json.dumps({"count": len(rows), "runs": rows}))
        else:
            print(sweep_file.format_listing(sweep, rows))
        return 0
    if command == "run":
        from mnv2_jax.sweeps import local

        code = local.run_sweep(sweep, args.workdir, overrides, parallel=args.parallel).exit_code
        if args.plot:
            from mnv2_jax import workdir as workdir_lib
            from mnv2_jax.analysis import figures, records

            runs = records.load_runs([args.workdir])
            for kind in args.plot.split(","):
                for path in figures.make(kind.strip(), runs, str(workdir_lib.path(args.workdir, "plots"))):
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


def run_command(args: argparse.Namespace, extra: list[str]) -> None:
    code = main(args, extra)
    if code:
        sys.exit(code)
