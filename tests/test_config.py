"""Config values are type-checked: `--config.KEY=VALUE` text is read as the key's type, a value of
the wrong type is one error naming the key and the type, and batches must split over the devices.

No JAX: everything here runs on `mnv2_jax.config` alone, and the command-line check shows the
error comes before the train loop (and JAX) is imported.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import ml_collections
import pytest

from mnv2_jax import config as config_lib

REPO = pathlib.Path(__file__).resolve().parent.parent
MNIST = str(REPO / "configs" / "mnist.py")


@pytest.fixture(scope="module")
def mnist():
    return config_lib.load_config(MNIST)


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("seed", "abc", "an integer"),
        ("augment.flip", "ture", r"a boolean \(true/false/1/0\)"),
        ("dropout_rate", "x", "a float"),
        ("eval_crop", "...", "a float"),
        ("width", "abc", "a float"),
        ("total_steps", "1.5", "an integer or None"),  # a float for an int key
        ("seed", "true", "an integer"),  # a boolean is not an integer here
        ("width", "None", "a float"),  # only placeholders (and total_epochs) take None
        ("cache", "yes", r"a boolean \(true/false/1/0\) or None"),
        ("expansion", "abc", r"a number or a tuple of 7 numbers \(one per row of Table 2\)"),
        ("wandb.tags", "a b", "a tuple"),
    ],
)
def test_text_of_the_wrong_type_names_the_key_and_type(mnist, key, text, expected):
    with pytest.raises(ValueError) as info:
        config_lib.apply_overrides(mnist, {key: text})
    message = str(info.value)
    assert message.startswith(f"config key '{key}': expected "), message
    assert f"got {text!r}" in message and "\n" not in message
    assert re.search(f"expected {expected}, got", message), message


@pytest.mark.parametrize(
    "key, value, pattern",
    [
        ("total_steps", 2.0, r"'total_steps': expected an integer or None, got 2.0"),
        ("seed", True, r"'seed': expected an integer, got True"),
        ("augment.flip", 2, r"'augment.flip': expected a boolean"),
        ("data_dir", 3, r"'data_dir': expected a string or None, got 3"),
        # Closed sets name their values, as validate_config does.
        (
            "residual",
            3,
            r"'residual': expected a string, one of \('bottleneck', 'expansion', 'none'\), got 3",
        ),
        ("expansion", (6.0, True), r"'expansion': expected a number or a tuple"),
    ],
)
def test_typed_values_of_the_wrong_type_are_refused(mnist, key, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        config_lib.apply_overrides(mnist, {key: value})


@pytest.mark.parametrize(
    "text, value",
    [
        ("true", True),
        ("TRUE", True),
        ("True", True),
        ("1", True),
        ("false", False),
        ("FaLsE", False),
        ("0", False),
    ],
)
def test_boolean_spellings(mnist, text, value):
    config = config_lib.apply_overrides(mnist, {"augment.flip": text, "progress": text, "cache": text})
    assert config.augment.flip is value and config.progress is value and config.cache is value


@pytest.mark.parametrize("text", ["ture", "yes", "t", "2", "", "on"])
def test_other_boolean_spellings_are_refused(mnist, text):
    with pytest.raises(ValueError, match=r"'augment.flip': expected a boolean \(true/false/1/0\)"):
        config_lib.apply_overrides(mnist, {"augment.flip": text})


def test_values_of_the_right_type(mnist):
    config = config_lib.apply_overrides(
        mnist,
        {
            "width": "1",  # an int for a float key is widened
            "optim.lr": 1,
            "total_epochs": "None",  # total_epochs may be None: total_steps is set
            "eval_every_steps": "None",  # placeholders take None
            "cache": "null",
            "augment.area_range": "0.1,1.0",
            "augment.aspect_ratio_range": [0.5, 2],  # a list for a tuple key
            "wandb.tags": "baseline",  # a bare value is a 1-tuple (ml_collections' TupleParser)
            "wandb.name": "123",  # text for a string key stays text
            "wandb.entity": '"o\'neil team"',  # a quoted literal is the string it spells
            "residual": "none",  # a value of residual, not None
        },
    )
    assert config.width == 1.0 and isinstance(config.width, float)
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.total_epochs is None and config.eval_every_steps is None and config.cache is None
    assert config.augment.area_range == (0.1, 1.0) and config.augment.aspect_ratio_range == (0.5, 2)
    assert config.wandb.tags == ("baseline",) and config.wandb.name == "123"
    assert config.wandb.entity == "o'neil team" and config.residual == "none"
    assert config_lib.apply_overrides(mnist, {"wandb.tags": "['a', 'b']"}).wandb.tags == ("a", "b")
    config_lib.validate_config(config)


def test_expansion_is_a_number_or_a_tuple(mnist):
    per_row = config_lib.apply_overrides(mnist, {"expansion": "[1, 6, 6, 6, 6, 6, 6]"})
    assert per_row.expansion == (1, 6, 6, 6, 6, 6, 6)
    config_lib.validate_config(per_row)
    back = config_lib.apply_overrides(per_row, {"expansion": 4})
    assert back.expansion == 4.0 and isinstance(back.expansion, float)
    assert config_lib.apply_overrides(mnist, {"expansion": (2.0,) * 7}).expansion == (2.0,) * 7
    with pytest.raises(ValueError, match="expansion"):
        config_lib.validate_config(config_lib.apply_overrides(mnist, {"expansion": [6, 6]}))  # 7 rows


def test_the_result_stays_type_safe(mnist):
    config = config_lib.apply_overrides(mnist, {"total_steps": 5})
    assert config.is_type_safe
    with pytest.raises(TypeError):
        config.total_steps = "5"  # the placeholder's int type survives the override
    # A config built without ml_collections' checks is checked by validate_config.
    loose = ml_collections.ConfigDict(mnist.to_dict(), type_safe=False)
    loose.augment.flip = "ture"
    with pytest.raises(ValueError, match=r"config key 'augment.flip': expected a boolean"):
        config_lib.validate_config(loose)


@pytest.mark.parametrize(
    "overrides, devices, processes, message",
    [
        ({"batch_size": 30}, 8, 1, r"'batch_size': 30 does not split evenly over 8 devices; .* 24 or 32$"),
        ({"batch_size": 4}, 8, 1, r"'batch_size': 4 .* multiple of 8, e.g. 8$"),
        ({"eval_batch_size": 60}, 8, 1, r"'eval_batch_size': 60 .* 56 or 64$"),
        ({"batch_size": 36}, 4, 8, r"'batch_size': 36 .* 4 devices in 8 processes; .* 32 or 40$"),
    ],
)
def test_batches_must_split_over_the_devices(mnist, overrides, devices, processes, message):
    config = config_lib.apply_overrides(mnist, overrides)
    with pytest.raises(ValueError, match=message):
        config_lib.validate_batch_sizes(config, devices, processes)


def test_batches_that_split_are_accepted(mnist):
    config_lib.validate_batch_sizes(mnist, 8)  # 128, eval None (= batch_size)
    config_lib.validate_batch_sizes(config_lib.apply_overrides(mnist, {"eval_batch_size": 24}), 8, 2)
    config_lib.validate_batch_sizes(config_lib.apply_overrides(mnist, {"batch_size": 30}), 1)


def test_train_command_refuses_a_wrong_type_before_jax_loads(tmp_path):
    """`mnv2 train ... --config.seed=abc`: exit status 2, one line naming the key, no workdir, and
    neither JAX nor the train loop imported."""
    workdir = tmp_path / "run"
    code = textwrap.dedent(
        f"""
        import sys
        from mnv2_jax import cli
        try:
            cli.main(["train", "--config", {MNIST!r}, "--workdir", {str(workdir)!r}, "--config.seed=abc"])
        except SystemExit as e:
            heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "flax", "tensorflow"))
            print(e.code, heavy, "mnv2_jax.train.loop" in sys.modules)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert proc.stdout.split() == ["2", "[]", "False"], (proc.stdout, proc.stderr)
    assert proc.stderr.splitlines() == [
        "mnv2 train: error: config key 'seed': expected an integer, got 'abc'"
    ]
    assert not workdir.exists()
