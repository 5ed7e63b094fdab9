"""`mnv2 info`: analytic multiply-adds and parameters, per layer (no JAX)."""

from __future__ import annotations

import argparse
import json


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
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help=(
            "classifier size (default 1000; 0 = none); detection: foreground classes (default 80); "
            "segmentation: classes with the background (default 21)"
        ),
    )
    p.add_argument("--config", default=None, help="read the settings from a config file (configs/X.py[:ARG])")


def _task_settings(args: argparse.Namespace) -> tuple[str, str | None, bool, dict]:
    """`(task, detection head type, whether the class count was given, segmentation head settings)`:
    flags, else the config file."""
    task, head_type, given = args.task, args.head, args.num_classes is not None
    segmentation = {"aspp": False, "aspp_separable": False, "depth": 256}
    if args.config:
        from mnv2_jax.config import load_config

        config = load_config(args.config)
        task = task or config.get("task", None)
        if head_type is None and "detection" in config:
            head_type = config.detection.head
        if "segmentation" in config:
            segmentation = {key: config.segmentation[key] for key in segmentation}
        given = given or config.get("num_classes", None) is not None
    segmentation["aspp"] = bool(args.aspp or segmentation["aspp"])
    return task or "classification", head_type, given, segmentation


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
    task, head_type, classes_given, segmentation = _task_settings(args)
    if task == "segmentation":
        _segmentation_info(args, s, resolution, classes_given, segmentation)
        return
    if task != "classification":
        _task_info(args, task, s, resolution, head_type, classes_given)
        return
    arch = spec.build_architecture(**s)
    # The classification head (pool, dropout, classifier) is part of the counted network.
    summary = {"task": task, **accounting.summary(arch, resolution)}
    if args.json:
        print(json.dumps(summary))
        return
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


def _task_info(
    args: argparse.Namespace,
    task: str,
    settings: dict,
    resolution: int,
    head_type: str | None,
    classes_given: bool,
) -> None:
    """A task head on the backbone (no classifier): the whole network's counts and the head's alone."""
    from mnv2_jax import accounting, spec
    from mnv2_jax.tasks import head_counts

    counter = head_counts(task)
    if args.resolution is None and not args.config:
        resolution = counter.DEFAULT_RESOLUTION
    given = settings.pop("num_classes")
    num_classes = given if classes_given else counter.DEFAULT_NUM_CLASSES
    head_type = head_type or counter.HEAD_TYPES[0]
    arch = spec.build_architecture(**settings, num_classes=0)
    whole, head = counter.count(arch, resolution, num_classes, head_type)
    summary = {
        "task": task,
        **accounting.summary(arch, resolution),
        "num_classes": num_classes,
        "head_type": head_type,
        "madds": whole.madds,
        "params": whole.params,
        "params_bn": whole.params_bn,
        "head": {"madds": head.madds, "params": head.params, "params_bn": head.params_bn},
        **counter.extra_info(resolution),
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(
        f"MobileNetV2 width {arch.width:g}, resolution {resolution} with the {head_type} {task} head, "
        f"{num_classes} classes"
    )
    print(accounting.format_counts(whole))
    print(
        f"\nmadds {whole.madds:,} ({whole.madds / 1e6:.1f}M)   params {whole.params:,} "
        f"({whole.params / 1e6:.2f}M)   batch-norm params {whole.params_bn:,}\n"
        f"head alone: madds {head.madds:,} ({head.madds / 1e6:.1f}M)   params {head.params:,} "
        f"({head.params / 1e6:.2f}M)   batch-norm params {head.params_bn:,}"
    )


def _segmentation_info(
    args: argparse.Namespace, settings: dict, resolution: int, classes_given: bool, head: dict
) -> None:
    """Mobile DeepLabv3: the backbone to its last block at `--output-stride` (default 16) and the
    DeepLabv3 head for `--num-classes` (default 21, PASCAL VOC), with `--aspp` (or the config's
    `segmentation.aspp`) if given."""
    from mnv2_jax import accounting, spec

    given = settings.pop("num_classes")
    num_classes = given if classes_given else 21
    if args.config is None and args.output_stride is None:
        settings["output_stride"] = 16
    if settings["output_stride"] is None:
        raise SystemExit("--output-stride: the segmentation head needs 8, 16 or 32")
    arch = spec.build_architecture(**settings, num_classes=0)
    summary = {
        "task": "segmentation",
        **accounting.deeplab_summary(arch, resolution, num_classes, **head),
    }
    if args.json:
        print(json.dumps(summary))
        return
    print(
        f"Mobile DeepLabv3 on MobileNetV2 width {arch.width:g}, resolution {resolution}, output stride "
        f"{arch.output_stride}, {num_classes} classes, " + ("ASPP" if head["aspp"] else "no ASPP")
    )
    print(accounting.format_counts(accounting.count_deeplab(arch, resolution, num_classes, **head)))
    print(
        f"\nmadds {summary['madds']:,} ({summary['madds'] / 1e9:.2f}B)   params {summary['params']:,}   "
        f"batch-norm params {summary['params_bn']:,}   total {summary['params_total']:,} "
        f"({summary['params_total'] / 1e6:.2f}M)"
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    from mnv2_jax.tasks import HEAD_COUNTS, TASKS

    p = sub.add_parser("info", help="analytic multiply-adds and parameters, per layer")
    _add_arch_args(p)
    p.add_argument(
        "--task",
        default=None,
        choices=tuple(dict.fromkeys([*TASKS, *HEAD_COUNTS])),
        help="the head counted on top (default classification)",
    )
    p.add_argument(
        "--head",
        default=None,
        choices=("ssdlite", "ssd"),
        help="detection head: SSDLite (default) or regular SSD",
    )
    p.add_argument(
        "--aspp", action="store_true", help="segmentation: with the three 3x3 atrous ASPP branches"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object (madds, params, params_bn, settings)"
    )
    p.set_defaults(func=cmd_info)
