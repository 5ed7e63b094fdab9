"""The `mnv2` command line (also `python -m mnv2_jax`).

Each subcommand imports what it needs when it runs, so `mnv2 --help`,
`mnv2 info` and `mnv2 sweep list` answer without loading JAX or TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import sys

from mnv2_jax import quiet


def build_parser() -> argparse.ArgumentParser:
    from mnv2_jax.cli import bench, info, interop, memory, plot, sweep, train

    parser = argparse.ArgumentParser(
        prog="mnv2",
        description="MobileNetV2 (Sandler et al., 2018) in JAX/Flax: train, sweep, account, plot.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_parser(sub)
    info.add_parser(sub)
    bench.add_parser(sub)
    # The sweep and plot parsers import only the standard library: `mnv2 --help` stays instant.
    sweep.add_parser(sub).set_defaults(func=sweep.run_command, takes_extra=True)
    plot.add_parser(sub).set_defaults(func=plot.main)
    interop.add_parser(sub)
    memory.add_parser(sub)
    for name in _COMPUTE_COMMANDS:
        _add_verbose(sub.choices[name])
    return parser


# Commands that run XLA computations: they start under the allocator of
# `mnv2_jax.allocator` (a re-exec of the process, before JAX is imported).
_COMPUTE_COMMANDS = ("train", "eval", "bench", "sweep", "memory", "export")


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    """`--verbose` on `parser`, or on each of its subcommands (`mnv2 sweep run ... --verbose`)."""
    children = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in children:
        for child in action.choices.values():
            _add_verbose(child)
    if not children:
        parser.add_argument(
            "--verbose",
            action="store_true",
            help=f"also show TensorFlow's start-up logs (or set {quiet.ENV_VAR}=1)",
        )


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else argv
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "verbose", False):
        os.environ[quiet.ENV_VAR] = "1"  # the environment reaches the restarted and child processes
    if not quiet.verbose():
        # TensorFlow (tf.data, export) keeps its C++ logs to warnings and up.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        if from_command_line and args.command in _COMPUTE_COMMANDS:
            # Only a real `mnv2`/`python -m mnv2_jax` process restarts itself;
            # main([...]) called from Python (tests, notebooks) never does.
            from mnv2_jax import allocator

            allocator.maybe_reexec(argv)
        if getattr(args, "takes_extra", False):
            args.func(args, extra)
        else:
            if extra:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.func(args)
    except ValueError as e:
        # Configuration and input errors: one clear line, no traceback.
        print(f"mnv2 {args.command}: error: {e}", file=sys.stderr)
        sys.exit(2)
