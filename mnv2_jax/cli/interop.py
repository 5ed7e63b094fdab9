"""`mnv2 import-keras` (Keras ImageNet weights) and `mnv2 export` (TFLite, SavedModel)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


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
    if config.get("task", "classification") == "detection":
        # The images the TFLite detections are checked on: a few of the eval split's.
        from mnv2_jax.tools.interop import detection_export

        if args.data_dir:
            config.data_dir = args.data_dir
        config.resolution = resolution
        try:
            calibration = detection_export.check_images(config)
        except (ValueError, OSError) as e:
            print(
                f"mnv2 export: {config.dataset} not available ({e}); checking the detections on noise images",
                file=sys.stderr,
            )
    elif args.quantize and args.calibration > 0:
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
        nms=_nms_settings(config),
    )
    print(json.dumps(report, indent=None if args.json else 2))


def _nms_settings(config: Any) -> Any:
    """A detection run's post-processing settings (what its TFLite export's op is given)."""
    if config.get("task", "classification") != "detection":
        return None
    from mnv2_jax.tasks import get_task

    return get_task(config).nms_settings()


def add_parser(sub: argparse._SubParsersAction) -> None:
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
