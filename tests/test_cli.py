"""The `mnv2` command line: `info` gives the published numbers, errors name the argument, config files
are read, and the light commands load neither JAX nor TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mnv2_jax import accounting, cli, spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, check=True):
    proc = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _main(capsys, *argv):
    cli.main(list(argv))
    return capsys.readouterr().out


def test_module_info_json_gives_the_published_numbers():
    out = json.loads(_run("-m", "mnv2_jax", "info", "--json").stdout)
    assert out["madds"] == 300_774_272  # 1.0/224, 1000 classes: "300M"
    assert out["params"] == 3_470_760  # "3.47M"
    assert out["params_bn"] == 34_112
    assert all(isinstance(out[k], int) for k in ("madds", "params", "params_bn"))
    assert (out["width"], out["resolution"], out["num_classes"]) == (1.0, 224, 1000)


def test_info_json_flags(capsys):
    out = json.loads(_main(capsys, "info", "--width", "1.4", "--resolution", "224", "--json"))
    assert round(out["madds"] / 1e6) == 582 and round(out["params"] / 1e6, 2) == 6.06
    out = json.loads(
        _main(capsys, "info", "--width", "0.35", "--resolution", "96", "--num-classes", "1001", "--json")
    )
    assert int(out["madds"] / 1e6) == 11 and round(out["params"] / 1e6, 2) == 1.66
    out = json.loads(_main(capsys, "info", "--expansion", "1,2.5,6,6,6,6,6", "--residual", "none", "--json"))
    assert out["expansion"] == [1.0, 2.5, 6.0, 6.0, 6.0, 6.0, 6.0] and out["residual"] == "none"
    plain = json.loads(_main(capsys, "info", "--json"))
    assert out["madds"] < plain["madds"]  # row 2 expands 2.5x instead of 6x
    out = json.loads(_main(capsys, "info", "--num-classes", "0", "--json"))
    assert out["params"] == plain["params"] - 1_281_000


def test_info_table(capsys):
    out = _main(capsys, "info", "--width", "0.5", "--resolution", "160")
    lines = out.splitlines()
    total = [line.split() for line in lines if line.startswith("total")]
    assert len(total) == 1
    madds, params, params_bn = (int(cell.replace(",", "")) for cell in total[0][1:])
    counts = accounting.count(spec.build_architecture(width=0.5), 160)
    assert (madds, params, params_bn) == (counts.madds, counts.params, counts.params_bn)
    assert int(madds / 1e6) == 50 and round(params / 1e6, 2) == 1.95  # TF-Slim: 0.5/160
    assert "block_16/project" in out and "classifier" in out
    assert "width 0.5, resolution 160" in out


def test_console_script_table():
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "mnv2"), "info"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "total" in proc.stdout and "300,774,272" in proc.stdout


def test_help():
    proc = _run("-m", "mnv2_jax", "--help")
    for command in ("train", "info", "eval", "bench"):
        assert command in proc.stdout
    proc = _run("-m", "mnv2_jax", "info", "--help")
    assert "--width" in proc.stdout and "--json" in proc.stdout


@pytest.mark.parametrize(
    "args, name",
    [
        (["--width", "-1"], "width"),
        (["--width", "abc"], "--width"),
        (["--resolution", "16"], "resolution"),
        (["--expansion", "6,6"], "expansion"),
        (["--expansion", "0"], "expansion"),
        (["--residual", "dense"], "--residual"),
        (["--output-stride", "4"], "--output-stride"),
        (["--num-classes", "-5"], "num_classes"),
        (["--config", "no/such/config.py"], "--config"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_values_exit_nonzero_naming_the_argument(capsys, args, name):
    with pytest.raises(SystemExit) as exc:
        cli.main(["info", *args])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert name in err
    assert "Traceback" not in err


def test_bad_value_in_a_subprocess():
    proc = _run("-m", "mnv2_jax", "info", "--width", "0", check=False)
    assert proc.returncode != 0
    assert "width" in proc.stderr and "Traceback" not in proc.stderr


def test_info_reads_a_config_file(tmp_path, capsys):
    path = tmp_path / "half.py"
    path.write_text(
        textwrap.dedent(
            """
            from mnv2_jax.config import base_config


            def get_config(arg=None):
                c = base_config()
                c.width = 0.5
                c.resolution = 160
                if arg == "relu6":
                    c.bottleneck_activation = "relu6"
                return c
            """
        )
    )
    out = json.loads(_main(capsys, "info", "--config", str(path), "--json"))
    assert (out["width"], out["resolution"]) == (0.5, 160)
    assert int(out["madds"] / 1e6) == 50 and round(out["params"] / 1e6, 2) == 1.95  # TF-Slim 0.5/160
    out = json.loads(_main(capsys, "info", "--config", f"{path}:relu6", "--json"))
    assert out["bottleneck_activation"] == "relu6"
    # Explicit flags win over the file.
    out = json.loads(_main(capsys, "info", "--config", str(path), "--resolution", "224", "--json"))
    assert (out["width"], out["resolution"]) == (0.5, 224)


def test_light_commands_do_not_import_jax_or_tensorflow():
    code = textwrap.dedent(
        """
        import contextlib, io, sys
        from mnv2_jax import accounting, cli, spec
        from mnv2_jax import config
        with contextlib.redirect_stdout(io.StringIO()):
            cli.main(["info"])
            cli.main(["info", "--json", "--width", "0.5"])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax", "tensorflow", "wandb"))
        assert not heavy, heavy
        """
    )
    _run("-c", code)
