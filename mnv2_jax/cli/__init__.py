"""The `mnv2` command line (also `python -m mnv2_jax`).

Each subcommand imports what it needs when it runs, so `mnv2 --help`,
`mnv2 info` and `mnv2 sweep list` answer without loading JAX or TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mnv2_jax import quiet


def _expansion(text: str) -> float | tuple[float, ...]:
    values = [float(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else tuple(values)


def _add_arch_args(p: argparse.ArgumentParser, resolution_default: int | None = 224) -> None:
    p.add_argument("--width", type=float, default=None, help="width multiplier (default 1.0)")
    p.add_argument(
        "--resolution", type=int, default=None, help=f"input resolution (default {resolution_default})"
    )
    p.add_argument(
        "--expansion", type=_expansion, default=None, help="ratio t, or 7 comma-separated (one per row)"
    )
    p.add_argument("--bottleneck-activation", default=None, choices=("linear", "relu6"))
    p.add_argument("--residual", default=None, choices=("bottleneck", "expansion", "none"))
    p.add_argument("--output-stride", type=int, default=None, choices=(8, 16, 32))
    p.add_argument("--num-classes", type=int, default=None, help="classifier size (default 1000; 0 = none)")
    p.add_argument("--config", default=None, help="read the settings from a config file (configs/X.py[:ARG])")


def _arch_settings(args: argparse.Namespace) -> dict:
    """Architecture settings: a config file's values, then explicit flags on top."""
    settings = dict(
        width=1.0,
        resolution=224,
        expansion=6.0,
        bottleneck_activation="linear",
        residual="bottleneck",
        output_stride=None,
        num_classes=1000,
        max_repeats=None,
    )
    if args.config:
        from mnv2_jax.config import load_config

        config = load_config(args.config)
        for key in settings:
            if key in config and config[key] is not None:
                settings[key] = config[key]
        if isinstance(settings["expansion"], list):
            settings["expansion"] = tuple(settings["expansion"])
    for key in (
        "width",
        "resolution",
        "expansion",
        "bottleneck_activation",
        "residual",
        "output_stride",
        "num_classes",
    ):
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    return settings


def cmd_info(args: argparse.Namespace) -> None:
    from mnv2_jax import accounting, spec

    s = _arch_settings(args)
    resolution = s.pop("resolution")
    arch = spec.build_architecture(**s)
    if args.json:
        print(json.dumps(accounting.summary(arch, resolution)))
        return
    summary = accounting.summary(arch, resolution)
    print(
        f"MobileNetV2 width {arch.width:g}, resolution {resolution}, expansion {summary['expansion']}, "
        f"{arch.bottleneck_activation} bottleneck, residual '{arch.residual}'"
        + (f", output stride {arch.output_stride}" if arch.output_stride else "")
    )
    print(accounting.format_table(arch, resolution))
    print(
        f"\nmadds {summary['madds']:,} ({summary['madds'] / 1e6:.1f}M)   params {summary['params']:,} "
        f"({summary['params'] / 1e6:.2f}M)   batch-norm params {summary['params_bn']:,}"
    )


def cmd_bench(args: argparse.Namespace) -> None:
    from mnv2_jax.tools import bench

    if args.tflite:
        from mnv2_jax.tools.interop import tflite

        result = tflite.benchmark(args.tflite, threads=args.threads, repeats=args.repeats)
    elif args.input:
        result = bench.benchmark_input(
            resolution=args.resolution or 224, batch_size=args.batch_size, num_batches=args.steps or 20
        )
    else:
        s = _arch_settings(args)
        result = bench.benchmark(
            width=s["width"],
            resolution=s["resolution"],
            expansion=s["expansion"],
            bottleneck_activation=s["bottleneck_activation"],
            residual=s["residual"],
            num_classes=s["num_classes"],
            batch_size=args.batch_size,
            dtype=args.dtype,
            steps=args.steps,
            repeats=args.repeats,
            depthwise_impl=args.depthwise_impl,
            pointwise_impl=args.pointwise_impl,
            modes=tuple(args.modes.split(",")),
            infer_chunk=args.infer_chunk,
            log=None if args.json else print,
        )
    print(json.dumps(result) if args.json else bench.format_result(result))


def cmd_train(args: argparse.Namespace, extra: list[str]) -> None:
    from mnv2_jax import config as config_lib
    from mnv2_jax.data import input_pipeline

    config = config_lib.load_config(args.config)
    config = config_lib.apply_overrides(config, config_lib.parse_override_args(extra))
    # The dataset first: one that is missing or cannot be downloaded fails in seconds, before
    # the training stack (JAX, Flax, Orbax) loads.
    input_pipeline.dataset_info(config)
    from mnv2_jax.train import loop as train

    train.train_and_evaluate(config, args.workdir, overwrite=args.overwrite, profile=args.profile)


def cmd_eval(args: argparse.Namespace) -> None:
    from mnv2_jax.train import loop as train

    result = train.evaluate_workdir(args.workdir, step=args.step)
    print(json.dumps(result, indent=None if args.json else 2))


def cmd_sweep(args: argparse.Namespace, extra: list[str]) -> None:
    from mnv2_jax.sweeps import sweep_file as sweeps

    code = sweeps.main(args, extra)
    if code:
        sys.exit(code)


def cmd_plot(args: argparse.Namespace) -> None:
    from mnv2_jax.analysis import figures as analysis

    analysis.main(args)  # AnalysisError is a ValueError: one line on stderr, exit 2


def cmd_import_keras(args: argparse.Namespace) -> None:
    from mnv2_jax.tools.interop import keras as keras_interop

    try:
        out = keras_interop.import_keras_weights(
            args.width, args.resolution, args.out, weights_path=args.weights
        )
    except RuntimeError as e:  # no network: the message says where to put the .h5
        print(f"mnv2 import-keras: error: {e}", file=sys.stderr)
        sys.exit(1)
    print(
        f"wrote {out}/config.json and {out}/variables.msgpack (Keras MobileNetV2 {args.width:g}/{args.resolution}, "
        f"1000 ImageNet classes). Fine-tune: --config.init_from={out}; export: mnv2 export --workdir {out}"
    )


def cmd_export(args: argparse.Namespace) -> None:
    from mnv2_jax.tools.interop import export

    module, variables, config = export.load_for_export(args.workdir)
    resolution = args.resolution or config.resolution
    calibration = None
    if args.quantize and args.calibration > 0:
        if args.data_dir:
            config.data_dir = args.data_dir
        config.resolution = resolution
        try:
            calibration = export.calibration_from_dataset(config, args.calibration)
        except ValueError as e:
            print(
                f"mnv2 export: {config.dataset} not available ({e}); calibrating int8 on noise images, "
                "so its ranges and agreement figure are rough",
                file=sys.stderr,
            )
    out = args.out or os.path.join(args.workdir, "export")
    report = export.export(
        variables,
        module,
        resolution,
        out,
        format=args.format,
        quantize=args.quantize,
        calibration=calibration,
    )
    print(json.dumps(report, indent=None if args.json else 2))


def _split_arg(text: str) -> int | tuple[int, ...]:
    values = [int(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else tuple(values)


def cmd_memory(args: argparse.Namespace) -> None:
    from mnv2_jax import spec
    from mnv2_jax.tools import memory

    width = 1.0 if args.width is None else args.width
    resolution = 224 if args.resolution is None else args.resolution
    spec.validate(width=width, resolution=resolution)
    arch = spec.build_architecture(width=width)
    memory.normalize_split(arch, args.split)  # a bad --split fails before anything is compiled
    result = {"analytic": memory.analytic(arch, resolution)}
    if not args.analytic_only:
        result.update(
            memory.measure(
                width,
                resolution,
                args.split,
                args.batch,
                args.dtype,
                repeats=args.repeats,
                plan=not args.no_plan,
                loop=args.loop,
                depthwise_impl=args.depthwise_impl,
                pointwise_impl=args.pointwise_impl,
            )
        )
    if args.json:
        print(json.dumps(result))
        return
    print(memory.format_analytic(result["analytic"]))
    if not args.analytic_only:
        print()
        print(memory.format_measured(result))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnv2",
        description="MobileNetV2 (Sandler et al., 2018) in JAX/Flax: train, sweep, account, plot.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    p = sub.add_parser("info", help="analytic multiply-adds and parameters, per layer")
    _add_arch_args(p)
    p.add_argument(
        "--json", action="store_true", help="print one JSON object (madds, params, params_bn, settings)"
    )
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="measure train-step and inference throughput and compile time")
    _add_arch_args(p)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument(
        "--steps", type=int, default=None, help="steps per timed repeat (default: about 10 s of work)"
    )
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is reported")
    p.add_argument("--depthwise-impl", default="auto", choices=("auto", "lax", "shifted"))
    p.add_argument("--pointwise-impl", default="auto", choices=("auto", "lax", "dot"))
    p.add_argument("--modes", default="train,infer", help="comma-separated: train, infer")
    p.add_argument(
        "--infer-chunk",
        type=int,
        default=None,
        help="images per inference chunk, a divisor of the batch size (default: steps.infer_chunk: "
        "on one CPU device chunks of at least 8 images at 1.0/224, else the whole batch; "
        "the batch size = the whole batch at once)",
    )
    p.add_argument(
        "--input", action="store_true", help="measure the input pipeline alone (input_images_per_sec)"
    )
    p.add_argument("--tflite", default=None, help="benchmark an exported .tflite file instead")
    p.add_argument("--threads", type=int, default=1, help="TFLite interpreter threads (with --tflite)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)

    from mnv2_jax.sweeps import (
        sweep_file as sweeps,  # standard library only at import: the parser stays instant
    )

    p = sweeps.add_parser(sub)
    p.set_defaults(func=cmd_sweep, takes_extra=True)

    from mnv2_jax.analysis import figures as analysis  # standard library only at import, like sweeps

    p = analysis.add_parser(sub)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("import-keras", help="convert Keras' ImageNet MobileNetV2 weights into a directory")
    p.add_argument("--width", type=float, required=True, help="alpha: 0.35, 0.5, 0.75, 1.0, 1.3 or 1.4")
    p.add_argument("--resolution", type=int, required=True, help="96, 128, 160, 192 or 224")
    p.add_argument("--out", required=True, help="directory for config.json and variables.msgpack")
    p.add_argument("--weights", default=None, help="a local Keras .h5 weights file (offline)")
    p.set_defaults(func=cmd_import_keras)

    p = sub.add_parser("export", help="export a run (or imported weights) to TFLite or a TF SavedModel")
    p.add_argument("--workdir", required=True, help="a run's workdir or an import-keras directory")
    p.add_argument("--format", default="tflite", choices=("tflite", "savedmodel"))
    p.add_argument(
        "--quantize", default=None, choices=("int8",), help="full-integer post-training quantization"
    )
    p.add_argument("--out", default=None, help="output directory (default WORKDIR/export)")
    p.add_argument("--resolution", type=int, default=None, help="input size (default: the run's resolution)")
    p.add_argument(
        "--calibration", type=int, default=256, help="int8: eval-split images to calibrate on (0 = noise)"
    )
    p.add_argument("--data-dir", default=None, help="TFDS data_dir for the calibration images")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "memory",
        help="memory-efficient inference (Section 5.1): Table 3 and the measured peak with split blocks",
        description="The paper's Table 3 derived from the architecture (16-bit activations), then XLA's "
        "temporary memory and the throughput of the batch-norm-folded model, standard vs each block split "
        "into S groups of its expanded channels (and a per-block plan with the same peak).",
    )
    p.add_argument("--width", type=float, default=None, help="width multiplier (default 1.0)")
    p.add_argument("--resolution", type=int, default=None, help="input resolution (default 224)")
    p.add_argument(
        "--split",
        type=_split_arg,
        default=4,
        help="groups per block: S, or one per block S0,S1,... (default 4)",
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--repeats", type=int, default=7, help="timed repeats; the median is reported")
    p.add_argument("--no-plan", action="store_true", help="skip the planned per-block split")
    p.add_argument("--loop", default="while", choices=("while", "unrolled"), help="unrolled: to see why not")
    p.add_argument("--depthwise-impl", default="auto", choices=("auto", "lax", "shifted"))
    p.add_argument("--pointwise-impl", default="auto", choices=("auto", "lax", "dot"))
    p.add_argument("--analytic-only", action="store_true", help="only Table 3 (no JAX, instant)")
    p.add_argument("--json", action="store_true", help="one JSON object: analytic, standard, split, planned")
    p.set_defaults(func=cmd_memory)

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
