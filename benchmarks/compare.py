"""JAX vs PyTorch MobileNetV2 throughput, setting by setting.

For each setting (width/resolution) and batch size, runs our benchmark
(``mnv2 bench ... --json``) and the PyTorch reference (``benchmarks/torch_mnv2.py
... --json``) one after the other, each in its own subprocess so that neither
inherits the other's thread pools or memory; with ``--rounds N`` the pair runs N
times, alternating which goes first, and the median of each side is kept.
Prints a table with the ratio JAX / PyTorch (> 1: JAX is faster) for training
and inference. The torch side runs with ``--ema 0.9999`` because our train step
also updates the weight and batch-norm moving average (``--torch-args '--ema 0'``
turns it off: later arguments win).

Training and inference run in separate processes (``--modes split``, the
default): each side's inference is measured in a process that did nothing else.
Measured in the same process after a train phase (``--modes together``), the
train phase's leftover state moves inference in opposite directions for the
two frameworks (``benchmarks/README.md`` gives the figures), so that ratio
measures the process history as much as inference.

Both sides run under the same host allocator (``--allocator``, default ``auto``:
jemalloc with huge pages where installed, see ``mnv2_jax/allocator.py``); the
allocator changes CPU step times by up to 2x for both frameworks, so comparing
JAX under one allocator with PyTorch under another would measure the allocator.

    python benchmarks/compare.py                       # the default five settings, batch 32
    python benchmarks/compare.py --settings 1.0/224,1.0/96 --batch-sizes 32,128 --json out.json
    python benchmarks/compare.py --jax-cmd 'python my_bench.py --w {width} --r {resolution} --b {batch_size}'

Command templates may use ``{width}``, ``{resolution}``, ``{batch_size}``,
``{python}`` (this interpreter) and ``{mode_args}`` (with ``--modes split``, the
arguments that select one mode: ``--modes train``/``--modes infer`` for ours,
``--skip-infer``/``--skip-train`` for torch_mnv2.py; a custom template needs it
there). Each command must print one JSON object with the metrics it measured
(``train_images_per_sec``, ``infer_images_per_sec``) on stdout (other output
before it is ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from mnv2_jax import allocator  # noqa: E402  (standard library only)
from mnv2_jax.tools.bench import library_versions  # noqa: E402  (standard library and numpy only)

DEFAULT_SETTINGS = "1.0/224,1.0/160,1.0/96,0.5/128,0.35/96"
METRICS = ("train_images_per_sec", "infer_images_per_sec")
MODES = ("split", "together")
# Arguments that make each default command measure one mode only (`--modes split`).
MODE_ARGS = {
    "jax": {"train": "--modes train", "infer": "--modes infer"},
    "torch": {"train": "--skip-infer", "infer": "--skip-train"},
}
COMMON = "--width {width} --resolution {resolution} --batch-size {batch_size} --json {mode_args}"


def default_jax_cmd() -> str:
    """`mnv2 bench` if the console script is installed, else ``python -m mnv2_jax bench``."""
    return f"mnv2 bench {COMMON}" if shutil.which("mnv2") else f"{{python}} -m mnv2_jax bench {COMMON}"


def default_torch_cmd() -> str:
    """torch_mnv2.py with the weight EMA on: our train step keeps one (slim recipe, decay 0.9999)."""
    return f"{{python}} {shlex.quote(str(HERE / 'torch_mnv2.py'))} {COMMON} --ema 0.9999"


def parse_settings(text: str) -> list[tuple[float, int]]:
    """'1.0/224,0.35/96' -> [(1.0, 224), (0.35, 96)]."""
    settings = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            width, resolution = item.split("/")
            settings.append((float(width), int(resolution)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"setting {item!r}: expected WIDTH/RESOLUTION, e.g. 1.0/224"
            ) from None
    if not settings:
        raise argparse.ArgumentTypeError("no settings given")
    return settings


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"batch sizes: expected integers like 32,128, got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes: expected positive integers, got {text!r}")
    return sizes


def parse_env(items: list[str]) -> dict[str, str]:
    """['A=1', 'B=x'] -> {'A': '1', 'B': 'x'}."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"environment: expected KEY=VALUE, got {item!r}")
        env[key] = value
    return env


def parse_json_output(stdout: str) -> dict[str, Any]:
    """The last JSON object printed on stdout (log lines before it are ignored)."""
    text = stdout.strip()
    try:
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    except json.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].lstrip().startswith("{"):
            try:
                value, _ = decoder.raw_decode("\n".join(lines[i:]).lstrip())
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise ValueError("no JSON object on stdout")


def run_one(
    template: str,
    width: float,
    resolution: int,
    batch_size: int,
    extra: str,
    timeout: float,
    extra_env: dict[str, str] | None = None,
    metrics: tuple[str, ...] = METRICS,
    mode_args: str = "",
) -> dict[str, Any]:
    """Run one benchmark command; its JSON result plus `wall_seconds`, or `{"error": ...}`
    (also when one of `metrics` is missing from it)."""
    command = template.format(
        width=width,
        resolution=resolution,
        batch_size=batch_size,
        python=sys.executable,
        mode_args=mode_args,
    )
    argv = shlex.split(command) + shlex.split(extra)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra_env or {})
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "command": argv}
    except OSError as exc:
        return {"error": f"could not start: {exc}", "command": argv}
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": f"exit status {proc.returncode}: " + " | ".join(tail), "command": argv}
    try:
        result = parse_json_output(proc.stdout)
    except ValueError as exc:
        return {"error": str(exc), "command": argv, "stdout_tail": proc.stdout[-500:]}
    missing = [m for m in metrics if not isinstance(result.get(m), (int, float))]
    if missing:
        return {"error": f"missing {', '.join(missing)}", "command": argv, "result": result}
    result["wall_seconds"] = wall
    result["command"] = argv
    return result


def merge_modes(train: dict[str, Any], infer: dict[str, Any]) -> dict[str, Any]:
    """One result from a train-only and an infer-only run of the same side (`--modes split`):
    the train run's fields (compile times included), the infer run's inference fields.
    When one mode failed, the other's metrics stay and `mode_errors` says what failed."""
    errors = {mode: r["error"] for mode, r in (("train", train), ("infer", infer)) if "error" in r}
    if len(errors) == 2:
        return {"error": "; ".join(f"{mode}: {e}" for mode, e in errors.items())}
    merged = {} if "error" in train else dict(train)
    if "error" not in infer:
        merged.update({k: v for k, v in infer.items() if k.startswith("infer_")})
    good = [r for r in (train, infer) if "error" not in r]
    merged["wall_seconds"] = sum(r["wall_seconds"] for r in good)
    merged["command"] = [r.get("command") for r in (train, infer)]
    if errors:
        merged["mode_errors"] = errors
    return merged


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each metric over the successful rounds (the last one's other fields)."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[-1]["error"] if runs else "not run", "rounds": runs}
    combined = dict(good[-1])
    for key in (*METRICS, "compile_seconds"):
        values = [r[key] for r in good if isinstance(r.get(key), (int, float))]
        if values:
            combined[key] = statistics.median(values)
    combined["rounds"] = [{k: r.get(k) for k in (*METRICS, "error", "mode_errors")} for r in runs]
    return combined


def ratio(jax_result: dict[str, Any], torch_result: dict[str, Any], key: str) -> float | None:
    a, b = jax_result.get(key), torch_result.get(key)
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else None


def _fmt(value: Any, spec: str = ".1f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def _errors(result: dict[str, Any]) -> list[str]:
    """What failed in a combined result: the whole run, or single modes in some rounds."""
    if "error" in result:
        return [result["error"]]
    return [
        f"{mode}: {error}"
        for r in result.get("rounds", [])
        for mode, error in (r.get("mode_errors") or {}).items()
    ]


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per setting and batch size; images/s and JAX / PyTorch ratios."""
    header = (
        "setting",
        "batch",
        "JAX train",
        "torch train",
        "train x",
        "JAX infer",
        "torch infer",
        "infer x",
        "JAX compile s",
    )
    table = [header]
    for row in rows:
        j, t = row["jax"], row["torch"]
        table.append(
            (
                f"{row['width']}/{row['resolution']}",
                str(row["batch_size"]),
                _fmt(j.get("train_images_per_sec")) if "error" not in j else "error",
                _fmt(t.get("train_images_per_sec")) if "error" not in t else "error",
                _fmt(row["ratio_train"], ".2f"),
                _fmt(j.get("infer_images_per_sec")) if "error" not in j else "error",
                _fmt(t.get("infer_images_per_sec")) if "error" not in t else "error",
                _fmt(row["ratio_infer"], ".2f"),
                _fmt(j.get("compile_seconds")),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("images/s; 'x' = JAX / PyTorch (> 1: JAX faster).")
    errors = [
        f"  {row['width']}/{row['resolution']} b{row['batch_size']} {side}: {message}"
        for row in rows
        for side in ("jax", "torch")
        for message in _errors(row[side])
    ]
    if errors:
        lines += ["errors:", *errors]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--settings",
        type=parse_settings,
        default=parse_settings(DEFAULT_SETTINGS),
        help=f"comma-separated WIDTH/RESOLUTION (default {DEFAULT_SETTINGS})",
    )
    p.add_argument("--batch-sizes", type=parse_batch_sizes, default=[32], help="comma-separated (default 32)")
    p.add_argument(
        "--rounds", type=int, default=1, help="pairs of runs per setting, order alternating (default 1)"
    )
    p.add_argument(
        "--modes",
        default="split",
        choices=MODES,
        help="split (default): train and inference each in a fresh process, per side; "
        "together: one process per side trains, then infers (custom --jax-cmd/--torch-cmd "
        "must then print both metrics)",
    )
    p.add_argument(
        "--jax-cmd", default=None, help="our benchmark's command template (default: mnv2 bench ...)"
    )
    p.add_argument("--torch-cmd", default=None, help="the torch command template (default: torch_mnv2.py)")
    p.add_argument("--jax-args", default="", help="extra arguments appended to our command")
    p.add_argument("--torch-args", default="", help="extra arguments for torch_mnv2.py, e.g. '--steps 20'")
    p.add_argument(
        "--jax-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for our side (repeatable)",
    )
    p.add_argument(
        "--torch-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the torch side (repeatable), e.g. OMP_WAIT_POLICY=PASSIVE on a busy machine",
    )
    p.add_argument(
        "--allocator",
        default="auto",
        choices=allocator.ALLOCATORS,
        help="host allocator for both sides (default auto: jemalloc if installed, else glibc huge pages)",
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds per benchmark run (default 1800)")
    p.add_argument("--json", metavar="OUT", default=None, help="also write all results to this JSON file")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("--rounds: must be >= 1")
    commands = {"jax": args.jax_cmd or default_jax_cmd(), "torch": args.torch_cmd or default_torch_cmd()}
    extras = {"jax": args.jax_args, "torch": args.torch_args}
    shared = allocator.allocator_env(args.allocator, os.environ, allocator.find_jemalloc())
    # Ours must not re-exec itself into a different allocator than the torch side's.
    shared.update({allocator.ENV_VAR: "system"})
    envs = {side: {**shared, **parse_env(getattr(args, f"{side}_env"))} for side in ("jax", "torch")}
    log_alloc = allocator.describe({**os.environ, **shared})
    if args.modes == "split":
        for side in ("jax", "torch"):
            if "{mode_args}" not in commands[side]:
                raise SystemExit(
                    f"--{side}-cmd: with --modes split the template must contain {{mode_args}} "
                    "(or use --modes together)"
                )
    modes = ("train", "infer") if args.modes == "split" else ("together",)

    def mode_args(side: str, mode: str) -> str:
        return MODE_ARGS[side].get(mode, "")

    jobs = [(w, r, b) for (w, r) in args.settings for b in args.batch_sizes]
    if args.dry_run:
        for w, r, b in jobs:
            for mode in modes:
                for side in ("jax", "torch"):
                    fmt = commands[side].format(
                        width=w,
                        resolution=r,
                        batch_size=b,
                        python=sys.executable,
                        mode_args=mode_args(side, mode),
                    )
                    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in envs[side].items())
                    print(" ".join(part for part in (f"{side}:", env, fmt, extras[side]) if part))
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"host allocator (both sides): {log_alloc}")
    log(
        f"modes: {args.modes} ({'train and inference in separate processes' if args.modes == 'split' else 'one process per side'})"
    )
    rows = []
    for n, (width, resolution, batch_size) in enumerate(jobs, 1):
        runs: dict[str, list[dict[str, Any]]] = {"jax": [], "torch": []}
        for k in range(args.rounds):
            order = ("jax", "torch") if k % 2 == 0 else ("torch", "jax")
            results: dict[str, dict[str, dict[str, Any]]] = {"jax": {}, "torch": {}}
            for mode in modes:
                metrics = METRICS if mode == "together" else (f"{mode}_images_per_sec",)
                for side in order:
                    log(
                        f"[{n}/{len(jobs)}] {width}/{resolution} batch {batch_size} round {k + 1}: {side} {mode} ..."
                    )
                    result = run_one(
                        commands[side],
                        width,
                        resolution,
                        batch_size,
                        extras[side],
                        args.timeout,
                        envs[side],
                        metrics=metrics,
                        mode_args=mode_args(side, mode),
                    )
                    results[side][mode] = result
                    if "error" in result:
                        log(f"    {side} failed: {result['error']}")
                    else:
                        rates = ", ".join(f"{m.split('_')[0]} {result[m]:.1f}" for m in metrics)
                        log(f"    {side}: {rates} images/s ({result['wall_seconds']:.0f} s)")
            for side in order:
                r = results[side]
                runs[side].append(r["together"] if "together" in r else merge_modes(r["train"], r["infer"]))
        jax_result, torch_result = combine(runs["jax"]), combine(runs["torch"])
        row = {
            "width": width,
            "resolution": resolution,
            "batch_size": batch_size,
            "jax": jax_result,
            "torch": torch_result,
            "ratio_train": ratio(jax_result, torch_result, "train_images_per_sec"),
            "ratio_infer": ratio(jax_result, torch_result, "infer_images_per_sec"),
        }
        rows.append(row)
        log(
            f"    JAX/PyTorch: train {_fmt(row['ratio_train'], '.2f')}x, infer {_fmt(row['ratio_infer'], '.2f')}x"
        )

    print(format_table(rows))
    if args.json:
        payload = {
            "host": {
                "machine": platform.machine(),
                "processor": platform.processor(),
                "cpus": os.cpu_count(),
            },
            "versions": library_versions(("jax", "jaxlib", "flax", "optax", "torch")),
            "commands": commands,
            "extra_args": extras,
            "extra_env": envs,
            "allocator": log_alloc,
            "rounds": args.rounds,
            "modes": args.modes,
            "results": rows,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 1 if any(_errors(row[side]) for row in rows for side in ("jax", "torch")) else 0


if __name__ == "__main__":
    sys.exit(main())
