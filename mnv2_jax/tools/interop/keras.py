"""Keras `MobileNetV2` -> our Flax module and variables.

`keras.applications.MobileNetV2` is the same network as ours (TF-Slim's
channel rounding, TF 'SAME' padding, the paper's shortcut rule), so its
weights port one to one:

=====================================  =====================================
Keras layer                            our variables
=====================================  =====================================
``Conv1`` / ``bn_Conv1``               ``stem/conv``, ``stem/bn``
``expanded_conv_depthwise[_BN]``       ``block_0/depthwise/{conv,bn}``
``expanded_conv_project[_BN]``         ``block_0/project/{conv,bn}``
``block_{i}_expand[_BN]``              ``block_{i}/expand/{conv,bn}``
``block_{i}_depthwise[_BN]``           ``block_{i}/depthwise/{conv,bn}``
``block_{i}_project[_BN]``             ``block_{i}/project/{conv,bn}``
``Conv_1`` / ``Conv_1_bn``             ``head/{conv,bn}``
``predictions``                        ``classifier/{kernel,bias}``
=====================================  =====================================

Kernels are HWIO on both sides, except the depthwise kernel: Keras stores
(3, 3, C, 1) (depth multiplier last), we store (3, 3, 1, C) like `nn.Conv`
with `feature_group_count=C`. Batch norm: Keras' gamma/beta/moving_mean/
moving_variance are our scale/bias and batch_stats mean/var; epsilon 1e-3
matches, the momentum is Keras' 0.999 (ours defaults to TF-Slim's 0.997), so
the imported module carries Keras' value and fine-tuning behaves as in Keras.

Keras pads its stride-2 depthwise convs with `ZeroPadding2D(correct_pad)`
followed by a 'valid' conv. For a fixed input size that is exactly TF
'SAME' (one extra row/column bottom-right for even sizes, one each side for
odd sizes), which is what our layers compute. A Keras model built with an
unknown spatial size (`input_shape=(None, None, 3)`) always pads (0, 1):
that equals 'SAME' only for even feature maps, so `from_keras` warns.

Both models take images in [-1, 1] (Keras' `mobilenet_v2.preprocess_input`
maps [0, 255] there), and Keras' ImageNet weights have 1000 classes without
TF-Slim's background class, the same label space as TFDS `imagenet2012`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from typing import Any

import numpy as np

from mnv2_jax import spec

KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
# Resolutions Keras publishes ImageNet weights for (one model per size).
KERAS_RESOLUTIONS = (96, 128, 160, 192, 224)
KERAS_WIDTHS = spec.PAPER_WIDTHS


def _keras():
    import keras

    return keras


def _numpy(variable: Any) -> np.ndarray:
    """A Keras variable's value (any backend) as float32 numpy."""
    return np.array(variable.numpy(), dtype=np.float32)


def _keras_prefix(index: int) -> str:
    """Keras names block 0 'expanded_conv_' and block i 'block_{i}_'."""
    return "expanded_conv_" if index == 0 else f"block_{index}_"


def _layer(model: Any, name: str) -> Any:
    try:
        return model.get_layer(name)
    except ValueError as e:
        raise ValueError(
            f"{model.name}: no layer {name!r}; expected a keras.applications.MobileNetV2 "
            "(layer names 'Conv1', 'block_1_expand', ..., 'Conv_1', 'predictions')"
        ) from e


def _has_layer(model: Any, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def _kernel(model: Any, name: str) -> np.ndarray:
    layer = _layer(model, name)
    kernel = _numpy(layer.kernel)
    if kernel.ndim == 4 and type(layer).__name__ == "DepthwiseConv2D":
        if kernel.shape[3] != 1:
            raise ValueError(f"{name}: depth multiplier {kernel.shape[3]} != 1 is not a MobileNetV2 layer")
        # (kh, kw, C, 1) -> (kh, kw, 1, C): the same memory order, so a reshape is the transpose.
        kernel = kernel.reshape(kernel.shape[0], kernel.shape[1], 1, kernel.shape[2])
    return kernel


def _channel_signature_keras(model: Any) -> tuple[int, ...]:
    """Output channels of every conv, in order: what identifies the width multiplier."""
    sig = [_kernel(model, "Conv1").shape[-1]]
    index = 0
    while _has_layer(model, f"{_keras_prefix(index)}project"):
        prefix = _keras_prefix(index)
        expanded = _kernel(model, f"{prefix}depthwise").shape[-1]
        sig += [expanded, _kernel(model, f"{prefix}project").shape[-1]]
        index += 1
    sig.append(_kernel(model, "Conv_1").shape[-1])
    return tuple(int(c) for c in sig)


def _channel_signature(arch: spec.Architecture) -> tuple[int, ...]:
    sig = [arch.stem.out_channels]
    for block in arch.blocks:
        sig += [block.expanded_channels, block.out_channels]
    sig.append(arch.head.out_channels)
    return tuple(sig)


def detect_width(model: Any) -> float:
    """The width multiplier (Keras' alpha) of a Keras MobileNetV2, from its layer shapes.

    The channel counts, not the model name, decide: a renamed model still
    converts, and a model whose shapes match no alpha fails loudly instead of
    loading into the wrong architecture. The alpha in Keras' default name
    (`mobilenetv2_{alpha:.2f}_{rows}`) is tried first so that alphas Keras
    accepts without pretrained weights (e.g. 0.25) work too.
    """
    found = _channel_signature_keras(model)
    candidates: list[float] = []
    match = re.fullmatch(r"mobilenetv2_(\d+\.\d+)_\d+", model.name)
    if match:
        candidates.append(float(match.group(1)))
    candidates += [w for w in KERAS_WIDTHS if w not in candidates]
    for width in candidates:
        if _channel_signature(spec.build_architecture(width=width, num_classes=0)) == found:
            return width
    raise ValueError(
        f"{model.name}: its channel counts {found} match no MobileNetV2 width multiplier among "
        f"{candidates}; is it a keras.applications.MobileNetV2 with expansion 6?"
    )


def _batch_norm(model: Any, name: str) -> tuple[dict, dict, float, float]:
    layer = _layer(model, name)
    params = {"scale": _numpy(layer.gamma), "bias": _numpy(layer.beta)}
    stats = {"mean": _numpy(layer.moving_mean), "var": _numpy(layer.moving_variance)}
    return params, stats, float(layer.epsilon), float(layer.momentum)


def _check_padding(model: Any, arch: spec.Architecture) -> None:
    """Keras' explicit stride-2 padding must equal the TF 'SAME' padding our layers use."""
    for block in arch.blocks:
        if block.stride != 2:
            continue
        layer = _layer(model, f"{_keras_prefix(block.index)}pad")
        size = tuple(layer.input.shape[1:3])
        keras_pad = tuple(tuple(int(p) for p in axis) for axis in layer.padding)
        if None in size:
            if keras_pad != ((0, 1), (0, 1)):
                raise ValueError(f"{layer.name}: unexpected padding {keras_pad} for an unknown input size")
            warnings.warn(
                f"{model.name} has no fixed input size: Keras pads every stride-2 depthwise conv (0, 1), "
                "which equals TF 'SAME' (our padding) only when that feature map is even-sized; the "
                "converted model matches Keras exactly only for such input sizes (e.g. multiples of 32).",
                stacklevel=3,
            )
            return
        ours = tuple(spec.same_padding(int(s), 3, 2) for s in size)
        if keras_pad != ours:
            raise ValueError(f"{layer.name}: Keras pads {keras_pad}, TF 'SAME' pads {ours} at size {size}")


def from_keras(model: Any) -> tuple[Any, dict]:
    """Convert a `keras.applications.MobileNetV2` into `(flax_module, variables)`.

    Any alpha, any input size, `include_top` True or False (pooling is a
    parameter-free choice: our module returns logits, and with
    `return_features=True` the 'head' feature map and the 'pre_logits'
    average). In eval mode `module.apply(variables, x, train=False)` equals
    `model(x, training=False)` of the Keras model built with
    `classifier_activation=None`. The layer structure is checked against our
    architecture (channels, strides, shortcuts, padding) so a mismatch fails
    with the layer's name rather than producing silently different outputs.
    """
    import jax
    import jax.numpy as jnp

    from mnv2_jax.models.mobilenet_v2 import create_model

    input_shape = tuple(getattr(model, "input_shape", ()) or ())
    if len(input_shape) == 4 and input_shape[-1] != 3:
        raise ValueError(
            f"{model.name}: input shape {model.input_shape}; only channels_last (NHWC) Keras models "
            "convert, as our module is NHWC"
        )
    width = detect_width(model)
    num_classes = 0
    if _has_layer(model, "predictions"):
        num_classes = int(_kernel(model, "predictions").shape[-1])
    arch = spec.build_architecture(width=width, num_classes=num_classes)

    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    epsilons: set[float] = set()
    momenta: set[float] = set()

    def conv_bn(ours: str, conv_name: str, bn_name: str, expected: tuple[int, ...]) -> tuple[dict, dict]:
        kernel = _kernel(model, conv_name)
        if kernel.shape != expected:
            raise ValueError(f"{conv_name}: kernel shape {kernel.shape}, our {ours} expects {expected}")
        bn_params, bn_stats, eps, momentum = _batch_norm(model, bn_name)
        epsilons.add(eps)
        momenta.add(momentum)
        return {"conv": {"kernel": kernel}, "bn": bn_params}, {"bn": bn_stats}

    stem = arch.stem
    params["stem"], stats["stem"] = conv_bn("stem", "Conv1", "bn_Conv1", (3, 3, 3, stem.out_channels))
    for block in arch.blocks:
        prefix = _keras_prefix(block.index)
        dw_layer = _layer(model, f"{prefix}depthwise")
        if tuple(dw_layer.strides) != (block.stride, block.stride):
            raise ValueError(
                f"{dw_layer.name}: strides {dw_layer.strides}, our {block.name} has {block.stride}"
            )
        if _has_layer(model, f"{prefix}add") != (block.shortcut == "bottleneck"):
            raise ValueError(f"{prefix}add: Keras and our {block.name} disagree on the shortcut")
        if _has_layer(model, f"{prefix}expand") != block.has_expansion:
            raise ValueError(f"{prefix}expand: Keras and our {block.name} disagree on the expansion conv")
        shapes = {
            "expand": (1, 1, block.in_channels, block.expanded_channels),
            "depthwise": (3, 3, 1, block.expanded_channels),
            "project": (1, 1, block.expanded_channels, block.out_channels),
        }
        if not block.has_expansion:
            del shapes["expand"]
        params[block.name], stats[block.name] = {}, {}
        for unit, shape in shapes.items():
            params[block.name][unit], stats[block.name][unit] = conv_bn(
                f"{block.name}/{unit}", f"{prefix}{unit}", f"{prefix}{unit}_BN", shape
            )
    head = arch.head
    params["head"], stats["head"] = conv_bn(
        "head", "Conv_1", "Conv_1_bn", (1, 1, head.in_channels, head.out_channels)
    )
    if num_classes:
        dense = _layer(model, "predictions")
        params["classifier"] = {"kernel": _kernel(model, "predictions"), "bias": _numpy(dense.bias)}
    _check_padding(model, arch)

    if len(epsilons) != 1 or len(momenta) != 1:
        raise ValueError(
            f"{model.name}: batch-norm layers differ in epsilon {epsilons} or momentum {momenta}"
        )
    module = create_model(
        width=width,
        num_classes=num_classes,
        bn_epsilon=epsilons.pop(),
        bn_momentum=momenta.pop(),
    )
    variables = {"params": params, "batch_stats": stats}
    return module, jax.tree.map(jnp.asarray, variables)


# --- Importing the published ImageNet weights --------------------------------------------------


def keras_weights_filename(width: float, resolution: int, include_top: bool = True) -> str:
    """The file name Keras downloads (and looks for in ~/.keras/models) for these weights."""
    suffix = "" if include_top else "_no_top"
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(width)}_{resolution}{suffix}.h5"


def imported_config(
    width: float,
    resolution: int,
    num_classes: int = 1000,
    bn_momentum: float = 0.999,
    bn_epsilon: float = 1e-3,
):
    """A valid training config describing an imported model.

    `total_steps=1` only keeps the config valid (exactly one duration must be
    set); an imported directory holds weights, not a run to resume. Keras'
    ImageNet weights classify 1000 classes with no background class, as TFDS
    `imagenet2012` does.
    """
    from mnv2_jax.config import base_config, validate_config

    config = base_config()
    config.width = float(width)
    config.resolution = int(resolution)
    config.num_classes = int(num_classes)
    config.dataset = "imagenet2012"
    config.total_epochs = None
    config.total_steps = 1
    config.bn_momentum = float(bn_momentum)
    config.bn_epsilon = float(bn_epsilon)
    validate_config(config)
    return config


def save_imported(out_dir: str, config: Any, variables: dict, provenance: dict | None = None) -> str:
    """Write `out_dir/config.json` and `out_dir/variables.msgpack`; returns `out_dir`.

    A flat msgpack of `{'params', 'batch_stats'}` (flax.serialization) rather
    than an orbax train state: an import has no optimizer state or step, and
    the file loads without knowing the optimizer. Training starts from it
    with `--config.init_from=out_dir`; `mnv2 export` reads it directly. The
    config's `provenance` entry (ignored by config readers) says where the
    weights came from.
    """
    from mnv2_jax import workdir as workdir_lib
    from mnv2_jax.config import validate_config
    from mnv2_jax.train import checkpoint

    validate_config(config)
    os.makedirs(out_dir, exist_ok=True)
    stored = json.loads(config.to_json())
    stored["provenance"] = dict(provenance or {}, source="mnv2_jax.tools.interop.keras")
    checkpoint.save_variables(out_dir, variables)
    workdir_lib.write_config(out_dir, stored)
    return out_dir


def load_imported(out_dir: str) -> dict:
    """`{'params': ..., 'batch_stats': ...}` (numpy arrays) from a `save_imported` directory."""
    from mnv2_jax.train import checkpoint

    if not checkpoint.has_variables_file(out_dir):
        raise ValueError(f"{out_dir}: not an imported-weights directory (no {checkpoint.VARIABLES})")
    return checkpoint.load_variables(out_dir)


def load_imported_run(out_dir: str) -> tuple[Any, dict, Any]:
    """`(module, variables, config)` of a `save_imported` directory, like `mnv2_jax.load_run`."""
    from mnv2_jax.runs import load_run

    return load_run(out_dir)


def import_keras_weights(width: float, resolution: int, out_dir: str, weights_path: str | None = None) -> str:
    """Convert Keras' ImageNet MobileNetV2 weights into `out_dir` (see `save_imported`).

    Keras publishes one model per (alpha, resolution) pair: alpha in
    0.35/0.5/0.75/1.0/1.3/1.4, resolution in 96/128/160/192/224. The weights
    are downloaded by Keras into `~/.keras/models/` (or `$KERAS_HOME/models/`)
    on first use; pass `weights_path` to convert a local .h5 instead. Returns
    `out_dir`.
    """
    if width not in KERAS_WIDTHS:
        raise ValueError(
            f"width: Keras publishes ImageNet weights for alpha in {KERAS_WIDTHS}, got {width!r}"
        )
    if resolution not in KERAS_RESOLUTIONS:
        raise ValueError(
            f"resolution: Keras publishes ImageNet weights for resolutions {KERAS_RESOLUTIONS}, got {resolution!r}"
        )
    keras = _keras()
    if weights_path is not None and not os.path.exists(weights_path):
        raise ValueError(f"weights_path: no such file {weights_path!r}")
    try:
        model = keras.applications.MobileNetV2(
            alpha=width,
            input_shape=(resolution, resolution, 3),
            weights=weights_path or "imagenet",
            classifier_activation=None,
        )
    except Exception as e:
        filename = keras_weights_filename(width, resolution)
        cache = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")
        raise RuntimeError(
            f"could not download the Keras ImageNet weights for MobileNetV2 alpha={width}, "
            f"resolution={resolution} ({type(e).__name__}: {e}). Without network access, fetch "
            f"{KERAS_WEIGHTS_URL}{filename} on a machine that has it and copy it into Keras' cache "
            f"directory {cache}/ (~/.keras/models/ unless KERAS_HOME is set), or pass the file's path as "
            "weights_path (`mnv2 import-keras --weights FILE`); then rerun."
        ) from e
    module, variables = from_keras(model)
    config = imported_config(
        width,
        resolution,
        module.arch.num_classes,
        bn_momentum=module.bn_momentum,
        bn_epsilon=module.bn_epsilon,
    )
    provenance = {
        "keras_model": model.name,
        "keras_version": keras.__version__,
        "weights": weights_path or f"{KERAS_WEIGHTS_URL}{keras_weights_filename(width, resolution)}",
    }
    return save_imported(out_dir, config, variables, provenance)
