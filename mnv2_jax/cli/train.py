"""`mnv2 train` (one run; rerun to resume) and `mnv2 eval` (a run's checkpoint on its eval split)."""

from __future__ import annotations

import argparse
import json


def cmd_train(args: argparse.Namespace, extra: list[str]) -> None:
    from mnv2_jax import config as config_lib

    config = config_lib.load_config(args.config)
    config = config_lib.apply_overrides(config, config_lib.parse_override_args(extra))
    config_lib.validate_config(config)  # a bad value fails here, before JAX loads
    # The dataset next: one that is missing or cannot be downloaded fails in seconds, before
    # the training stack (Flax, Optax, Orbax) loads.
    from mnv2_jax import tasks

    tasks.get_task(config).dataset_info()
    from mnv2_jax.train import loop as train

    train.train_and_evaluate(config, args.workdir, overwrite=args.overwrite, profile=args.profile)


def cmd_eval(args: argparse.Namespace) -> None:
    from mnv2_jax import runs

    result = runs.evaluate_workdir(args.workdir, step=args.step)
    print(json.dumps(result, indent=None if args.json else 2))


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one run (rerun the same command to resume)",
        description="Train one run. Extra --config.KEY=VALUE arguments override the config.",
    )
    p.add_argument("--config", required=True, help="configs/X.py[:ARG]")
    p.add_argument("--workdir", required=True, help="where config, metrics and checkpoints go")
    p.add_argument(
        "--overwrite", action="store_true", help="resume even if the config differs from the workdir's"
    )
    p.add_argument(
        "--profile", action="store_true", help="write a jax.profiler trace of a few steps to WORKDIR/profile"
    )
    p.set_defaults(func=cmd_train, takes_extra=True)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint (raw and EMA weights) on its eval split")
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
