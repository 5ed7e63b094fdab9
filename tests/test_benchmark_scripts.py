"""The side-by-side scripts in benchmarks/: parsing, medians, ratios (no framework runs)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from mnv2_jax import accounting, spec

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
