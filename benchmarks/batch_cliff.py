"""Where does the per-image cost of training jump as the batch grows?

On one H200 our bf16 train step at 1.0/224 is 5.6x slower per image at batch
2048 than at 1024 (`torch.compile`: 1.6x; the top-level README's GPU
benchmarks). The suspect:
at 2048 the 96-channel expansion of the first stride-2 block (112 x 112) holds
more than 2^31 elements, so kernels need 64-bit indexing or slower algorithms.

This script times forward + backward (train-mode batch norm, gradients of every
parameter, no optimizer) of the network cut after its first `K` blocks, for
each batch size, and prints microseconds per image beside the largest
activation's element count. Each cut network compiles in seconds, so batch
sizes on both sides of the bound fit in one short GPU run:

    python benchmarks/batch_cliff.py --blocks 1,2,4 --batch-sizes 1024,1664,1920,2048
    python benchmarks/batch_cliff.py --depthwise-impl shifted --pointwise-impl dot ...

If the cost per image jumps only where the largest activation crosses 2^31
elements, and only for cuts that include that activation, the bound is the
cause; `--depthwise-impl` / `--pointwise-impl` tell which kind of layer pays.
On GPU our convolutions run over batch pieces under 2^31 elements
(`layers.GPU_CONV_MAX_ELEMENTS`, as PyTorch does for cuDNN); `--no-conv-split`
times them whole, so one run of each says what the split is worth.
One JSON object per line goes to stdout with `--json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

INT32_BOUND = 2**31 - 1


def cut_model(width: float, blocks: int, dtype: str, depthwise_impl: str, pointwise_impl: str):
    """MobileNetV2 with the stem and the first `blocks` inverted residual blocks;
    the head is a 1x1 convolution to 8 channels and there is no classifier, so
    the cut network's own tail stays small next to the activations it times."""
    import jax.numpy as jnp

    from mnv2_jax import spec
    from mnv2_jax.models.mobilenet_v2 import MobileNetV2

    arch = spec.build_architecture(width=width, num_classes=0)
    if not 1 <= blocks <= len(arch.blocks):
        raise ValueError(f"--blocks: each cut must be between 1 and {len(arch.blocks)}, got {blocks}")
    kept = arch.blocks[:blocks]
    head = dataclasses.replace(arch.head, in_channels=kept[-1].out_channels, out_channels=8)
    return MobileNetV2(
        dataclasses.replace(arch, blocks=kept, head=head),
        dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32,
        depthwise_impl=depthwise_impl,
        pointwise_impl=pointwise_impl,
    )


def largest_activation(model, batch_size: int, resolution: int) -> tuple[str, int]:
    """(name, elements) of the biggest feature map the cut network returns
    (stem, each block's expansion and output, head), from shapes alone."""
    import jax
    import jax.numpy as jnp

    x = jax.ShapeDtypeStruct((batch_size, resolution, resolution, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    _, features = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, return_features=True), variables, x
    )
    name, shape = max(
        ((k, v.shape) for k, v in features.items() if v.ndim == 4), key=lambda kv: math.prod(kv[1])
    )
    return name, math.prod(shape)


def time_cut(
    model, batch_size: int, resolution: int, steps: int | None, repeats: int
) -> dict[str, float | int]:
    """Compile seconds and median seconds per step of forward + backward."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mnv2_jax.tools.bench import _steps_for, _time_steps

    variables = jax.jit(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, resolution, resolution, 3)))
    )()
    images = jnp.asarray(
        np.random.default_rng(0).uniform(-1, 1, (batch_size, resolution, resolution, 3)).astype(np.float32)
    )

    def loss(params, batch_stats, x):
        out, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.mean(jnp.square(out.astype(jnp.float32))), updates["batch_stats"]

    step = jax.jit(jax.grad(loss, has_aux=True))
    start = time.perf_counter()
    compiled = step.lower(variables["params"], variables["batch_stats"], images).compile()
    compile_seconds = time.perf_counter() - start

    def once():
        return compiled(variables["params"], variables["batch_stats"], images)

    first = min(_time_steps(once, 1, 2))
    n = steps or _steps_for(first)
    seconds = statistics.median(_time_steps(once, n, repeats)) / n
    return {"compile_seconds": compile_seconds, "steps": n, "seconds_per_step": seconds}


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    from mnv2_jax.nn import layers
    from mnv2_jax.tools.bench import library_versions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--blocks", type=_ints, default=[1, 2, 4], help="cuts: blocks kept after the stem")
    parser.add_argument("--batch-sizes", type=_ints, default=[1024, 1664, 1920, 2048])
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--depthwise-impl", choices=layers.DEPTHWISE_IMPLS, default="auto")
    parser.add_argument("--pointwise-impl", choices=layers.POINTWISE_IMPLS, default="auto")
    parser.add_argument(
        "--no-conv-split", action="store_true", help="convolutions whole, past 2^31 elements too"
    )
    parser.add_argument("--steps", type=int, default=None, help="steps per repeat (default: about 2 s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    args = parser.parse_args(argv)

    import jax

    if args.no_conv_split:
        layers.GPU_CONV_MAX_ELEMENTS = None
    print(
        f"# {jax.devices()[0].device_kind}, jax {jax.__version__}, {args.width}/{args.resolution}, "
        f"{args.dtype}, depthwise {args.depthwise_impl}, pointwise {args.pointwise_impl}, "
        f"conv split at {layers.GPU_CONV_MAX_ELEMENTS} elements on GPU",
        file=sys.stderr,
    )
    versions = library_versions()
    if not args.json:
        print(
            f"{'blocks':>6} {'batch':>6} {'largest activation':>30} {'> 2^31':>6} {'us/image':>9} {'compile s':>9}"
        )
    for blocks in args.blocks:
        model = cut_model(args.width, blocks, args.dtype, args.depthwise_impl, args.pointwise_impl)
        for batch_size in args.batch_sizes:
            name, elements = largest_activation(model, batch_size, args.resolution)
            timing = time_cut(model, batch_size, args.resolution, args.steps, args.repeats)
            row = dict(
                blocks=blocks,
                batch_size=batch_size,
                largest_activation=name,
                largest_elements=elements,
                over_int32=elements > INT32_BOUND,
                conv_split=not args.no_conv_split,
                us_per_image=1e6 * timing["seconds_per_step"] / batch_size,
                **timing,
                versions=versions,
            )
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                label = f"{name} {elements:.3g}"
                print(
                    f"{blocks:>6} {batch_size:>6} {label:>30} {'yes' if row['over_int32'] else 'no':>6} "
                    f"{row['us_per_image']:>9.2f} {row['compile_seconds']:>9.1f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
