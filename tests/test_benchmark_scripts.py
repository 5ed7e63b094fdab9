"""The side-by-side scripts in benchmarks/: parsing, medians, ratios, and gpu.sh's time limits
(no framework runs to completion)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import jax
import pytest

from mnv2_jax import accounting, spec
from mnv2_jax.models.mobilenet_v2 import MobileNetV2

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    module_spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


compare = _load("compare")
gpu_table = _load("gpu_table")
batch_cliff = _load("batch_cliff")


def test_compare_parses_settings_and_rejects_bad_ones():
    assert compare.parse_settings("1.0/224, 0.35/96") == [(1.0, 224), (0.35, 96)]
    with pytest.raises(argparse.ArgumentTypeError, match="WIDTH/RESOLUTION"):
        compare.parse_settings("1.0x224")
    with pytest.raises(argparse.ArgumentTypeError, match="positive"):
        compare.parse_batch_sizes("32,0")


def test_compare_reads_the_last_json_object_after_log_lines():
    stdout = (
        'compiling...\n{"train_images_per_sec": 1.0}\nmore log\n{"train_images_per_sec": 2.5,\n "x": [1]}\n'
    )
    assert compare.parse_json_output(stdout) == {"train_images_per_sec": 2.5, "x": [1]}
    with pytest.raises(ValueError):
        compare.parse_json_output("no json here")


def test_compare_combines_rounds_by_median_and_skips_failures():
    runs = [
        {"train_images_per_sec": 10.0, "infer_images_per_sec": 100.0},
        {"error": "timed out"},
        {"train_images_per_sec": 30.0, "infer_images_per_sec": 50.0},
        {"train_images_per_sec": 20.0, "infer_images_per_sec": 70.0},
    ]
    combined = compare.combine(runs)
    assert combined["train_images_per_sec"] == 20.0
    assert combined["infer_images_per_sec"] == 70.0
    assert len(combined["rounds"]) == 4
    assert "error" in compare.combine([{"error": "boom"}])
    assert compare.ratio({"a": 3.0}, {"a": 2.0}, "a") == 1.5
    assert compare.ratio({"a": 3.0}, {"error": "x"}, "a") is None


_FAKE_BENCH = """
import json, sys
args = sys.argv[1:]
rate = float(args[0])
out = {"compile_seconds": 1.0}
if "--modes" in args or "--skip-train" in args or "--skip-infer" in args:
    # one mode per process: say which, and measure only that
    if args[-1] in ("train", "--skip-infer"):
        out["train_images_per_sec"] = rate
    else:
        out["infer_images_per_sec"] = 10 * rate
else:
    out.update(train_images_per_sec=rate, infer_images_per_sec=10 * rate)
print("log line")
print(json.dumps(out))
"""


def test_compare_split_modes_runs_each_mode_in_its_own_process(tmp_path, capsys):
    fake = tmp_path / "fake_bench.py"
    fake.write_text(_FAKE_BENCH)
    common = [
        "--settings",
        "1.0/96",
        "--rounds",
        "2",
        "--allocator",
        "system",
        "--json",
        str(tmp_path / "o.json"),
    ]
    jax_cmd = f"{{python}} {fake} 30"
    torch_cmd = f"{{python}} {fake} 20"
    # split (default) needs the templates to take {mode_args}
    with pytest.raises(SystemExit, match="mode_args"):
        compare.main(["--jax-cmd", jax_cmd, "--torch-cmd", torch_cmd, *common])
    rc = compare.main(
        [
            "--jax-cmd",
            jax_cmd + " {mode_args}",
            "--torch-cmd",
            torch_cmd + " {mode_args}",
            "--torch-args",
            "",
            *common,
        ]
    )
    assert rc == 0
    payload = json.loads((tmp_path / "o.json").read_text())
    assert payload["modes"] == "split"
    assert payload["versions"]["jax"] == jax.__version__ and "jaxlib" in payload["versions"]
    (row,) = payload["results"]
    assert row["ratio_train"] == pytest.approx(1.5)
    assert row["ratio_infer"] == pytest.approx(1.5)
    # two processes per side and round: the train run's and the infer run's commands
    assert row["jax"]["command"][0][-2:] == ["--modes", "train"]
    assert row["jax"]["command"][1][-2:] == ["--modes", "infer"]
    assert row["torch"]["command"][1][-1] == "--skip-train"
    assert len(row["jax"]["rounds"]) == 2
    # together: one process per side measures both
    rc = compare.main(["--jax-cmd", jax_cmd, "--torch-cmd", torch_cmd, "--modes", "together", *common])
    assert rc == 0
    (row,) = json.loads((tmp_path / "o.json").read_text())["results"]
    assert row["ratio_infer"] == pytest.approx(1.5)
    assert isinstance(row["jax"]["command"][0], str)
    assert "1.50" in capsys.readouterr().out


def test_compare_keeps_the_mode_that_worked_when_the_other_failed():
    ok_train = {"train_images_per_sec": 1.0, "compile_seconds": 9.0, "wall_seconds": 1.0, "command": ["a"]}
    ok_infer = {"infer_images_per_sec": 8.0, "wall_seconds": 2.0, "command": ["b"]}
    merged = compare.merge_modes({"error": "exit status -9", "command": ["a"]}, ok_infer)
    assert merged["infer_images_per_sec"] == 8.0 and "train_images_per_sec" not in merged
    assert merged["mode_errors"] == {"train": "exit status -9"}
    combined = compare.combine([merged])
    assert combined["infer_images_per_sec"] == 8.0
    assert compare._errors(combined) == ["train: exit status -9"]
    assert compare.merge_modes(ok_train, ok_infer)["wall_seconds"] == 3.0
    both = compare.merge_modes({"error": "x"}, {"error": "y"})
    assert both == {"error": "train: x; infer: y"}


def _write_jsonl(path: Path, runs: dict[str, dict]) -> None:
    lines = [json.dumps({"run": name, **result}) for name, result in runs.items()]
    path.write_text("\n".join(lines) + "\nnot json\n")


def test_gpu_table_ratio_is_against_the_best_torch_run(tmp_path, capsys):
    common = {"width": 1.0, "resolution": 224, "device": "test card"}
    _write_jsonl(
        tmp_path / "results.jsonl",
        {
            "jax_b64": {**common, "train_images_per_sec": 300.0, "infer_images_per_sec": 900.0},
            "torch_eager_b64": {"train_images_per_sec": 100.0, "infer_images_per_sec": 1000.0},
            "torch_compile_b64": {"train_images_per_sec": 200.0, "infer_images_per_sec": 600.0},
        },
    )
    loaded = gpu_table.load(tmp_path)
    assert set(loaded) == {("jax", 64), ("torch_eager", 64), ("torch_compile", 64)}
    assert gpu_table.main([str(tmp_path), "--peak-tflops", "1"]) == 0
    out = capsys.readouterr().out
    # best torch train is the compiled run (200), best inference the eager one (1000)
    assert "train 1.50x, infer 0.90x" in out
    forward = 2 * accounting.summary(spec.build_architecture(width=1.0), 224)["madds"]
    assert f"{100 * 300.0 * 3 * forward / 1e12:.2f}" in out


def test_gpu_table_reads_per_run_json_files_and_says_when_there_are_none(tmp_path, capsys):
    assert gpu_table.main([str(tmp_path)]) == 1
    (tmp_path / "jax_b8.json").write_text(
        'log line\n{"train_images_per_sec": 5.0, "width": 0.5, "resolution": 96}\n'
    )
    (tmp_path / "unrelated.json").write_text("{}")
    assert set(gpu_table.load(tmp_path)) == {("jax", 8)}


def test_batch_cliff_times_cut_networks_and_names_their_largest_activation(capsys):
    """The cut network keeps the full network's first layers (same parameter
    shapes), and each row reports the largest feature map from the spec's own
    numbers: block 1's expansion at half resolution."""
    arch = spec.build_architecture(width=0.35, num_classes=0)
    args = ["--width", "0.35", "--resolution", "32", "--blocks", "2", "--batch-sizes", "2,4"]
    assert batch_cliff.main([*args, "--steps", "1", "--repeats", "1", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["blocks"], r["batch_size"]) for r in rows] == [(2, 2), (2, 4)]
    for r in rows:
        assert r["largest_activation"] == "block_1/expansion"
        assert r["largest_elements"] == r["batch_size"] * 16 * 16 * arch.blocks[1].expanded_channels
        assert r["over_int32"] is False
        assert r["us_per_image"] > 0 and r["seconds_per_step"] > 0 and r["steps"] == 1
        assert r["versions"]["jax"] == jax.__version__ and "jaxlib" in r["versions"]

    cut = batch_cliff.cut_model(0.35, 2, "float32", "auto", "auto")
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), "float32")
    shapes = [
        jax.tree.map(
            lambda a: a.shape, jax.eval_shape(lambda x, m=m: m.init(jax.random.PRNGKey(0), x), x)["params"]
        )
        for m in (cut, MobileNetV2(arch))
    ]
    for name in ("stem", "block_0", "block_1"):
        assert shapes[0][name] == shapes[1][name]
    assert shapes[0]["head"]["conv"]["kernel"] == (1, 1, arch.blocks[1].out_channels, 8)
    with pytest.raises(ValueError, match="--blocks"):
        batch_cliff.cut_model(0.35, 18, "float32", "auto", "auto")


def test_gpu_script_gives_each_run_the_time_limit_from_the_environment(tmp_path):
    """gpu.sh logs each run with the limit the environment gives it, ends a run at
    that limit and goes on. With 1 s limits the JAX runs are cut off (starting JAX
    alone takes longer) and nothing finishes, so no result is written. The PyTorch
    runs are cut off too, or fail at once where torch (optional) is not installed."""
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "PYTHON": sys.executable,
        "BATCHES": "2",
        "WIDTH": "0.35",
        "RESOLUTION": "32",
        "TORCH_DEVICE": "cpu",
        "JAX_LIMIT": "1",
        "EAGER_LIMIT": "1",
        "COMPILE_LIMIT": "1",
    }
    proc = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    log = (tmp_path / "runs.log").read_text()
    for run in ("jax_b2", "torch_eager_b2", "torch_compile_b2", "jax_shifted_b2"):
        assert re.search(rf"== {run} \(\S+, limit 1s\)", log), log
    for run in ("jax_b2", "jax_shifted_b2"):
        assert re.search(rf"== {run} \(\S+, limit 1s\)\n\s+exit 124:", proc.stdout), proc.stdout
    assert proc.stdout.count("exit ") == 4, proc.stdout
    assert not (tmp_path / "results.jsonl").exists()
