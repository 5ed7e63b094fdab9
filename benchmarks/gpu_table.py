"""Table of a `benchmarks/gpu.sh` run: images/s per side, JAX / best PyTorch, fraction of peak.

Reads `results.jsonl` as gpu.sh writes it (one JSON object per run, its name
under "run", e.g. `jax_b512`, `torch_compile_b512`), or one `NAME.json` file per
run. The fraction of peak counts 2 x multiply-adds per image for inference and
3 x that for a train step (forward, input gradient, weight gradient), from our
analytic accounting, over the card's dense bf16 rate (`--peak-tflops`, default
989: the H100/H200 SXM datasheet).

    python benchmarks/gpu_table.py OUT_DIR [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAME = re.compile(r"^(jax|jax_shifted|torch_eager|torch_compile)_b(\d+)$")


def _records(out: Path) -> list[tuple[str, str]]:
    """(run name, JSON text) pairs from results.jsonl, else from NAME.json files."""
    jsonl = out / "results.jsonl"
    if jsonl.exists():
        pairs = []
        for line in jsonl.read_text().splitlines():
            try:
                pairs.append((json.loads(line).get("run", ""), line))
            except json.JSONDecodeError:
                continue
        return pairs
    return [(p.stem, (p.read_text().strip().splitlines() or [""])[-1]) for p in sorted(out.glob("*.json"))]


def load(out: Path) -> dict[tuple[str, int], dict]:
    """{(variant, batch): result} for every run whose JSON parsed."""
    results = {}
    for name, text in _records(out):
        match = NAME.match(name)
        try:
            value = json.loads(text) if match else None
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            results[(match.group(1), int(match.group(2)))] = value
    return results


def flops_per_image(width: float, resolution: int) -> float:
    from mnv2_jax import accounting, spec

    return 2.0 * accounting.summary(spec.build_architecture(width=width), resolution)["madds"]


def fmt(value: object, spec: str = ".0f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    args = p.parse_args(argv)
    results = load(args.out)
    if not results:
        print(f"no results in {args.out}")
        return 1
    any_result = next(iter(results.values()))
    width, resolution = any_result.get("width", 1.0), any_result.get("resolution", 224)
    forward = flops_per_image(width, resolution)
    print(f"{width}/{resolution}; device: {any_result.get('device')}")
    header = f"{'run':<22}{'train img/s':>12}{'infer img/s':>12}{'train %peak':>12}{'infer %peak':>12}"
    print(header + f"{'compile s':>10}{'peak GiB':>10}")
    for (variant, batch), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        train, infer = r.get("train_images_per_sec"), r.get("infer_images_per_sec")

        def pct(rate: float | None, k: int) -> str:
            return fmt(100 * rate * k * forward / (args.peak_tflops * 1e12) if rate else None, ".2f")

        compile_s = r.get("compile_seconds") or r.get("train_warmup_seconds")
        peak = r.get("peak_memory_bytes")
        print(
            f"{variant + '_b' + str(batch):<22}{fmt(train):>12}{fmt(infer):>12}"
            f"{pct(train, 3):>12}{pct(infer, 1):>12}{fmt(compile_s, '.1f'):>10}"
            f"{fmt(peak / 2**30 if peak else None, '.1f'):>10}"
        )
    for batch in sorted({b for _, b in results}):
        ours = results.get(("jax", batch), {})
        best = {
            key: max(
                (r.get(key) or 0 for (v, b), r in results.items() if b == batch and v.startswith("torch")),
                default=0,
            )
            for key in ("train_images_per_sec", "infer_images_per_sec")
        }
        ratios = [
            f"{k.split('_')[0]} {ours[k] / best[k]:.2f}x"
            for k in best
            if best[k] and isinstance(ours.get(k), (int, float))
        ]
        if ratios:
            print(f"batch {batch}: JAX / best PyTorch: " + ", ".join(ratios))
    print(
        f"%peak: {3 * forward / 1e9:.2f} GFLOP per trained image, {forward / 1e9:.2f} per inferred image, "
        f"over {args.peak_tflops:.0f} TFLOP/s dense bf16"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
