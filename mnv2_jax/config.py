"""Training config: the keys every config has, their defaults, and validation.

Config files under `configs/` start from `base_config()` and override what
their experiment needs (big_vision style: the module docstring says the
command, the runtime and the expected result). Every key can be overridden
from the command line with `--config.KEY=VALUE`; `validate_config` rejects a
misspelt key or an invalid value with a message that names the key and the
allowed values, before anything runs.

Types come from `base_config()`: every key keeps the type of its default, and
`placeholder(T)` declares the type of a key whose default is None. Overrides
are set through a type-safe `ConfigDict` built from it, so ml_collections
refuses a value of the wrong type (a float for an int key, text for a number);
an int for a float key is widened. `expansion` is the one key of two types: a
number, or a tuple with one per row of Table 2.
"""

from __future__ import annotations

import difflib
import functools
import math
from typing import Any

import ml_collections

from mnv2_jax import spec

# Keys whose values come from a closed set.
CHOICES: dict[str, tuple] = {
    "bottleneck_activation": spec.BOTTLENECK_ACTIVATIONS,
    "residual": spec.RESIDUALS,
    "task": ("classification", "detection", "segmentation"),
    "recipe": ("slim", "tpu", "tf_od", "deeplab"),
    "dtype": ("float32", "bfloat16"),
    "depthwise_impl": ("auto", "lax", "shifted"),
    "pointwise_impl": ("auto", "lax", "dot"),
    "augment.crop": ("inception", "pad_crop", "none"),
    "augment.pad_mode": ("constant", "reflect"),
    "detection.head": ("ssdlite", "ssd"),
    "wandb.mode": ("auto", "online", "offline", "disabled"),
}

# Keys that may be set to None although their default is not: the run length is
# `total_epochs` or `total_steps`, and the other is None. (Keys whose default is
# None are placeholders and take None anyway.)
NULLABLE_KEYS = ("total_epochs",)

# The one key of two types (see the module docstring).
EXPANSION_KEY = "expansion"
EXPANSION_TYPE = "a number or a tuple of 7 numbers (one per row of Table 2)"

_TYPE_NAMES = {
    bool: "a boolean (true/false/1/0)",
    int: "an integer",
    float: "a float",
    str: "a string",
    tuple: "a tuple",
}
# Command-line spellings of booleans (compared lower-cased).
_BOOLEAN_TEXT = {"true": True, "1": True, "false": False, "0": False}

# What a resumed run may change without --overwrite.
RESUMABLE_KEYS = (
    "total_steps",
    "total_epochs",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "wandb",
    "progress",
)


def base_config() -> ml_collections.ConfigDict:
    """All keys with the paper's defaults (ImageNet, 1.0/224, the TF-Slim recipe)."""
    c = ml_collections.ConfigDict()
    c.task = "classification"  # what the backbone is trained for (mnv2_jax.tasks)
    # Model: the sweep axes of the paper.
    c.width = 1.0
    c.resolution = 224
    c.expansion = 6.0
    c.bottleneck_activation = "linear"
    c.residual = "bottleneck"
    c.output_stride = ml_collections.config_dict.placeholder(int)
    c.num_classes = ml_collections.config_dict.placeholder(int)  # None = from the dataset
    c.max_repeats = ml_collections.config_dict.placeholder(int)  # None = Table 2 (tests shrink it)
    c.dropout_rate = 0.2
    c.bn_momentum = 0.997
    c.bn_epsilon = 1e-3
    # Examples per batch-norm group: None = the global batch; else per group of
    # replicas (the paper's 16 workers each normalised their own 96).
    c.bn_group_size = ml_collections.config_dict.placeholder(int)
    c.dtype = "float32"
    c.depthwise_impl = "auto"
    c.pointwise_impl = "auto"

    # Data (TFDS).
    c.dataset = "imagenet2012"
    c.data_dir = ml_collections.config_dict.placeholder(str)
    c.train_split = "train"
    c.eval_split = ml_collections.config_dict.placeholder(str)  # None: 'validation' if present, else 'test'
    c.num_train_examples = ml_collections.config_dict.placeholder(int)  # None: from TFDS split info
    c.num_eval_examples = ml_collections.config_dict.placeholder(int)
    c.shuffle_buffer = 16_384
    c.cache = ml_collections.config_dict.placeholder(bool)  # None: cache datasets under 1 GiB in memory
    c.download = False  # let TFDS download and prepare a missing dataset (needs network)
    c.augment = ml_collections.ConfigDict()
    c.augment.crop = "inception"
    c.augment.area_range = (0.05, 1.0)
    c.augment.aspect_ratio_range = (3 / 4, 4 / 3)
    c.augment.min_object_covered = 0.1
    c.augment.pad = 4
    c.augment.pad_mode = "constant"
    c.augment.flip = True
    c.augment.color_distort = False
    c.eval_crop = 0.875

    # Duration: exactly one of these is set.
    c.batch_size = 1536  # global: the paper's 16 workers x 96
    # Input streams the global batch is drawn from (None: one per process). Fixed, the batches do
    # not depend on how many processes read them (a run resumes identically on another host count).
    c.data_shards = ml_collections.config_dict.placeholder(int)
    c.eval_batch_size = ml_collections.config_dict.placeholder(int)
    c.total_epochs = ml_collections.config_dict.placeholder(float)
    c.total_epochs = 420.0  # the TF-Slim reproduction's length
    c.total_steps = ml_collections.config_dict.placeholder(int)
    c.seed = 0

    # Optimisation: `recipe` fills every None below (see mnv2_jax.train.optim.RECIPES).
    c.recipe = "slim"
    c.optim = ml_collections.ConfigDict()
    for key in (
        "lr",
        "lr_reference_batch",
        "lr_decay_rate",
        "lr_decay_epochs",
        "lr_decay_steps",
        "warmup_epochs",
        "rmsprop_decay",
        "momentum",
        "rmsprop_epsilon",
        "rmsprop_initial_scale",
        "weight_decay",
        "label_smoothing",
        "ema_decay",
        "grad_clip_norm",
    ):
        c.optim[key] = ml_collections.config_dict.placeholder(float)
    c.optim.optimizer = ml_collections.config_dict.placeholder(str)  # 'rmsprop' | 'momentum'
    c.optim.lr_schedule = ml_collections.config_dict.placeholder(str)  # 'exponential' | 'poly' | 'cosine'
    c.optim.lr_power = ml_collections.config_dict.placeholder(float)  # of the 'poly' schedule

    # Segmentation (task 'segmentation': Mobile DeepLabv3, mnv2_jax.tasks.segmentation); `resolution`
    # is the size eval images are padded to (DeepLab's eval_crop_size), `output_stride` 8, 16 or 32.
    c.segmentation = ml_collections.ConfigDict()
    c.segmentation.crop_size = ml_collections.config_dict.placeholder(int)  # train crop; None = resolution
    c.segmentation.aspp = False  # the three 3x3 atrous branches (Table 7's ASPP rows)
    c.segmentation.aspp_separable = False  # TF DeepLab's separable ASPP instead of regular 3x3 convs
    c.segmentation.depth = 256  # channels of every head branch and the projection
    c.segmentation.dropout_rate = 0.1  # before the logits
    c.segmentation.bn_momentum = 0.9997  # the head's batch norm (DeepLab's decay and epsilon)
    c.segmentation.bn_epsilon = 1e-5
    c.segmentation.fine_tune_bn = True  # batch statistics in training (warned below 12 per group)
    c.segmentation.min_scale = 0.5  # random scale of train images, in steps of scale_step
    c.segmentation.max_scale = 2.0
    c.segmentation.scale_step = 0.25
    c.segmentation.eval_scales = (1.0,)  # multi-scale eval: DeepLab's MF rows use 0.5-1.75 in 0.25
    c.segmentation.eval_flip = False  # also average the left-right flipped image's probabilities

    # Detection (task='detection'; mnv2_jax.tasks.detection): the SSDLite head of TF's Object
    # Detection API, its targets, loss and post-processing.
    c.detection = ml_collections.ConfigDict()
    c.detection.head = "ssdlite"  # or 'ssd': regular 3x3 convs (the paper's Table 5 comparison)
    # Initial class-predictor biases: None = zero (TF's SSDLite config); p = RetinaNet's prior (p on
    # every class, 1 - p on background), e.g. 0.01 for a faster start on small runs.
    c.detection.class_prior = ml_collections.config_dict.placeholder(float)
    c.detection.max_boxes = 100  # ground-truth boxes per image, padded
    c.detection.random_crop = True  # TF's ssd_random_crop
    c.detection.neg_pos_ratio = 3.0  # hard negative mining: negatives kept per positive
    c.detection.min_negatives = 3
    c.detection.num_hard_examples = 3000
    c.detection.score_threshold = 1e-8  # post-processing: per-class NMS
    c.detection.iou_threshold = 0.6
    c.detection.max_detections = 100

    # Bookkeeping.
    c.log_every_steps = 100
    c.eval_every_steps = ml_collections.config_dict.placeholder(int)  # None = once per epoch
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.progress = True
    c.init_from = ml_collections.config_dict.placeholder(str)  # checkpoint dir to start from

    c.wandb = ml_collections.ConfigDict()
    c.wandb.mode = "auto"  # online if a key is set and the server answers, else offline
    c.wandb.project = "mnv2_jax"
    c.wandb.entity = ml_collections.config_dict.placeholder(str)
    c.wandb.group = ml_collections.config_dict.placeholder(str)
    c.wandb.name = ml_collections.config_dict.placeholder(str)
    c.wandb.tags = ()
    return c


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parse a config file's argument string `key=value,key=value` (big_vision style).

    Values are converted to the type of the default; unknown keys are an error.
    """
    out = ml_collections.ConfigDict(dict(defaults))
    if not arg:
        return out
    for item in arg.split(","):
        if "=" not in item:
            raise ValueError(f"config argument {item!r}: expected key=value (known keys: {sorted(defaults)})")
        key, value = item.split("=", 1)
        if key not in defaults:
            raise ValueError(_unknown_key_message(f"config argument {key!r}", key, defaults))
        default = defaults[key]
        if isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif default is None:
            out[key] = value
        else:
            out[key] = type(default)(value)
    return out


def _unknown_key_message(what: str, key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"{what} is not a known key.{hint} Known keys: {', '.join(sorted(known))}"


def flatten(config: ml_collections.ConfigDict | dict, prefix: str = "") -> dict[str, Any]:
    """`{'augment.crop': ..., ...}`: dotted keys to leaf values."""
    items = config.items() if isinstance(config, dict) else config.to_dict().items()
    out: dict[str, Any] = {}
    for key, value in items:
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            out.update(flatten(value if isinstance(value, dict) else value.to_dict(), f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the key and the allowed values for anything invalid."""
    known = flatten(base_config())
    given = flatten(config)
    for key in given:
        if key not in known:
            raise ValueError(_unknown_key_message(f"config key {key!r}", key, known))
    typed_config(config)  # every value of its key's type (a config may be built without the checks)
    for key, allowed in CHOICES.items():
        if given.get(key) not in allowed:
            raise ValueError(f"config key {key!r}: must be one of {allowed}, got {given.get(key)!r}")
    spec.validate(
        width=config.width,
        resolution=config.resolution,
        bottleneck_activation=config.bottleneck_activation,
        residual=config.residual,
        output_stride=config.output_stride,
        num_classes=config.num_classes if config.num_classes is not None else 0,
        max_repeats=config.max_repeats,
    )
    expansion = config.expansion
    spec.stage_expansions(tuple(expansion) if isinstance(expansion, (list, tuple)) else expansion)
    if (config.total_steps is None) == (config.total_epochs is None):
        raise ValueError(
            "config keys 'total_steps' and 'total_epochs': set exactly one, the other to None "
            f"(got total_steps={config.total_steps!r}, total_epochs={config.total_epochs!r})"
        )
    if config.total_steps is not None and config.total_steps < 1:
        raise ValueError(f"config key 'total_steps': must be >= 1, got {config.total_steps!r}")
    if config.total_epochs is not None and not config.total_epochs > 0:
        raise ValueError(f"config key 'total_epochs': must be > 0, got {config.total_epochs!r}")
    for key in ("batch_size", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ValueError(f"config key {key!r}: must be an integer >= 1, got {config[key]!r}")
    if not 0 < config.eval_crop <= 1:
        raise ValueError(f"config key 'eval_crop': must be in (0, 1], got {config.eval_crop!r}")
    if not 0 <= config.dropout_rate < 1:
        raise ValueError(f"config key 'dropout_rate': must be in [0, 1), got {config.dropout_rate!r}")
    if not 0 <= config.bn_momentum < 1:
        raise ValueError(f"config key 'bn_momentum': must be in [0, 1), got {config.bn_momentum!r}")
    if config.data_shards is not None and (
        not isinstance(config.data_shards, int)
        or config.data_shards < 1
        or config.batch_size % config.data_shards
    ):
        raise ValueError(
            f"config key 'data_shards': must be an integer >= 1 that divides batch_size={config.batch_size}, "
            f"got {config.data_shards!r}"
        )
    if config.bn_group_size is not None and config.batch_size % config.bn_group_size:
        raise ValueError(
            f"config key 'bn_group_size': must divide batch_size={config.batch_size}, got {config.bn_group_size}"
        )


def validate_batch_sizes(
    config: ml_collections.ConfigDict, device_count: int, process_count: int = 1
) -> None:
    """Refuse a `batch_size` or `eval_batch_size` that does not split evenly over the devices
    (and the processes); the message names the nearest multiples that do."""
    unit = math.lcm(device_count, process_count)
    for key in ("batch_size", "eval_batch_size"):
        value = config[key]
        if value is None or value % unit == 0:
            continue
        below, above = value // unit * unit, (value // unit + 1) * unit
        nearest = f"{below} or {above}" if below else str(above)
        over = f"{device_count} devices" + (f" in {process_count} processes" if process_count > 1 else "")
        raise ValueError(
            f"config key {key!r}: {value} does not split evenly over {over}; "
            f"use a multiple of {unit}, e.g. {nearest}"
        )


def load_config(path_and_arg: str) -> ml_collections.ConfigDict:
    """Load `configs/X.py[:ARG]`: the file's `get_config(ARG)` (ARG optional)."""
    import importlib.util
    import os

    path, _, arg = path_and_arg.partition(":")
    if not os.path.isfile(path):
        raise ValueError(f"--config: no such config file {path!r}")
    module_spec = importlib.util.spec_from_file_location(f"_mnv2_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config: {path} defines no get_config()")
    return module.get_config(arg) if arg else module.get_config()


def parse_value(text: str) -> Any:
    """A command-line value: a Python literal if it parses as one, else the string."""
    import ast

    if text in ("None", "null"):  # not 'none': it is a value of `residual`
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: dict[str, Any]
) -> ml_collections.ConfigDict:
    """Set dotted keys (`{'width': 0.5, 'optim.lr': 0.1}`), naming any unknown key or wrong type.

    Strings are command-line text, read as the key's type (`parse_text`); other
    values are set as given. Returns a type-safe copy of `config` (`typed_config`):
    a value of the wrong type is a ValueError naming the key and the expected type.
    """
    config = typed_config(config)
    known = flatten(config)
    for key, value in overrides.items():
        if key not in known:
            raise ValueError(_unknown_key_message(f"config key {key!r}", key, known))
        if isinstance(value, str):
            _set_typed(config, key, parse_text(key, value), given=value)
        else:
            _set_typed(config, key, value)
    return config


def typed_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A type-safe copy of `config` whose keys have `base_config()`'s types.

    Every value is set through ml_collections' type checks, so a config built
    without them (`type_safe=False`, or loaded from JSON) is checked too; keys
    `base_config()` lacks are copied unchecked (`validate_config` names them).
    """
    typed = base_config()
    schema = _schema()
    for key, value in flatten(config).items():
        if key in schema:
            _set_typed(typed, key, value)
        else:
            node, leaf = _holder(typed, key, create=True)
            node[leaf] = value
    return typed


def expected_type(key: str) -> str:
    """What a key takes, in words: 'an integer or None', 'a boolean (true/false/1/0)', ..."""
    if key == EXPANSION_KEY:
        return EXPANSION_TYPE
    kind, nullable = _schema()[key]
    words = _TYPE_NAMES.get(kind, kind.__name__)
    if key in CHOICES:
        words += f", one of {CHOICES[key]}"
    return f"{words} or None" if nullable else words


def parse_text(key: str, text: str) -> Any:
    """Command-line text for `key`, read as the key's type.

    'None'/'null' is None; booleans are true/false/1/0 in any case; tuples are read by
    ml_collections' `TupleParser` (a bare value is a 1-tuple); strings are the text
    itself, or the string a quoted literal spells; anything else is a Python literal
    (`parse_value`). Text that reads as another type is returned unchanged, so that
    setting it fails the type check and names the key.
    """
    if text in ("None", "null"):  # not 'none': it is a value of `residual`
        return None
    kind = _schema()[key][0] if key in _schema() else object
    if kind is bool:
        return _BOOLEAN_TEXT.get(text.lower(), text)
    if kind is tuple:
        from ml_collections.config_flags import tuple_parser

        try:
            return tuple_parser.TupleParser().parse(text)
        except ValueError as e:
            raise ValueError(
                f"config key {key!r}: expected {expected_type(key)}, got {text!r} ({e})"
            ) from None
    value = parse_value(text)
    if kind is str and not isinstance(value, str):
        return text  # '123' for a string key is the string '123'
    return value


@functools.cache
def _schema() -> dict[str, tuple[type, bool]]:
    """Every key of `base_config()`: (its declared type, whether it may be None)."""
    config = base_config()
    out = {}
    for key, default in flatten(config).items():
        node, leaf = _holder(config, key)
        out[key] = (node.get_type(leaf), default is None or key in NULLABLE_KEYS)
    return out


def _holder(
    config: ml_collections.ConfigDict, key: str, create: bool = False
) -> tuple[ml_collections.ConfigDict, str]:
    """The ConfigDict that holds a dotted key, and the key's last part."""
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
        if create and parent not in node:
            node[parent] = ml_collections.ConfigDict()
        node = node[parent]
    return node, leaf


def _set_typed(config: ml_collections.ConfigDict, key: str, value: Any, given: Any = None) -> None:
    """`config[key] = value` with ml_collections' type check; ValueError names the key and type
    (and shows `given`, the command-line text, when the value came from text)."""

    def _type_error(key: str, value: Any) -> ValueError:
        shown = value if given is None else given
        return ValueError(f"config key {key!r}: expected {expected_type(key)}, got {shown!r}")

    node, leaf = _holder(config, key)
    if key not in _schema():  # a key base_config() lacks: validate_config names it
        node[leaf] = value
        return
    if key == EXPANSION_KEY:
        # A number or a tuple: the declared float type cannot say that, so check here and
        # set past ml_collections' check (`spec.stage_expansions` checks the tuple's length).
        if isinstance(value, list):
            value = tuple(value)
        items = value if isinstance(value, tuple) else (value,)
        if not items or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            raise _type_error(key, value)
        with node.ignore_type():
            node[leaf] = value if isinstance(value, tuple) else float(value)
        return
    kind, nullable = _schema()[key]
    if value is None:
        if not nullable:
            raise _type_error(key, value)
    elif kind is bool and type(value) is int and value in (0, 1):
        value = bool(value)
    elif kind in (int, float) and isinstance(value, bool):
        raise _type_error(key, value)  # bool is an int to Python, not to a config
    try:
        node[leaf] = value
    except TypeError:
        raise _type_error(key, value) from None


def parse_override_args(args: list[str]) -> dict[str, Any]:
    """`['--config.width=0.5', '--config.optim.lr', '0.1']` -> `{'width': '0.5', 'optim.lr': '0.1'}`."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--config."):
            raise ValueError(f"unexpected argument {arg!r}: overrides look like --config.KEY=VALUE")
        body = arg[len("--config.") :]
        if "=" in body:
            key, value = body.split("=", 1)
        elif i + 1 < len(args):
            key, value = body, args[i + 1]
            i += 1
        else:
            raise ValueError(f"{arg}: missing a value (use --config.KEY=VALUE)")
        out[key] = value
        i += 1
    return out


def architecture_from_config(config: ml_collections.ConfigDict, num_classes: int) -> spec.Architecture:
    expansion = config.expansion
    return spec.build_architecture(
        width=config.width,
        expansion=tuple(expansion) if isinstance(expansion, (list, tuple)) else expansion,
        bottleneck_activation=config.bottleneck_activation,
        residual=config.residual,
        output_stride=config.output_stride,
        num_classes=num_classes,
        max_repeats=config.max_repeats,
    )
