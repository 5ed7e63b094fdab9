"""`mnv2 bench`: train-step and inference throughput and compile time."""

from __future__ import annotations

import argparse
import json

from mnv2_jax.cli.info import _add_arch_args, _arch_settings


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


def add_parser(sub: argparse._SubParsersAction) -> None:
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
