"""`mnv2 memory`: the paper's Table 3 and the measured peak of split blocks (Section 5.1)."""

from __future__ import annotations

import argparse
import json


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


def add_parser(sub: argparse._SubParsersAction) -> None:
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
