"""Memory-efficient inference (`mnv2_jax.tools.memory`, Section 5.1): the split model computes the same
function as the standard folded one, Table 3's rule gives the cells worked out by hand, bad
`split` values are refused, the saving shows up in XLA's memory analysis, the CLI and the
notebook run.

Kept small for 2 CPU cores: tiny networks (`max_repeats=1`: one block per row of Table 2, so
stride-2, identity-shortcut and t=1 blocks are all there) at 32-65 pixels, one compile per
(architecture, split).
"""

from __future__ import annotations

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnv2_jax.models.folded import fold_batch_norm, folded_apply
from mnv2_jax.spec import build_architecture
from mnv2_jax.tools import memory

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "notebooks" / "memory_efficient_inference.ipynb"


def _images(resolution: int, batch: int = 2, seed: int = 1):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(-1.0, 1.0, (batch, resolution, resolution, 3)).astype(np.float32))


def _relative_error(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def _run(arch, params, x, split, **kwargs):
    with jax.default_matmul_precision("highest"):  # full float32 on every backend (GPUs default to TF32)
        return jax.jit(lambda p, x: memory.split_apply(arch, p, x, split, **kwargs))(params, x)


def _reference(arch, params, x):
    with jax.default_matmul_precision("highest"):
        return jax.jit(lambda p, x: folded_apply(arch, p, x))(params, x)


# --- Equivalence --------------------------------------------------------------------------------


def test_split_equals_the_flax_module_folded(tiny):
    """Trained-style variables (random batch-norm statistics), folded by
    `fold_batch_norm`: every S and a per-block tuple give the module's eval-mode logits."""
    _, folded = fold_batch_norm(tiny.model, tiny.variables)
    folded = jax.tree.map(jnp.asarray, folded)
    arch = tiny.model.arch
    module_logits, _ = tiny.features()
    standard = _run(arch, folded, tiny.x, 1)
    assert _relative_error(standard, module_logits) < 1e-5
    assert _relative_error(standard, _reference(arch, folded, tiny.x)) < 1e-5
    n = len(arch.blocks)
    per_block = tuple(1 + (i % 3) for i in range(n))  # 1, 2, 3, 1, 2, 3, ...: mixed standard and split
    for split in (3, per_block):
        assert _relative_error(_run(arch, folded, tiny.x, split), standard) < 1e-5, split


@pytest.mark.parametrize(
    "width, resolution, split",
    [
        (0.35, 33, 4),  # odd sizes all the way down (33 -> 17 -> 9 -> 5 -> 3 -> 2 -> 1)
        (0.5, 65, 5),  # 5 divides few inner widths: clamped, overlapping last groups
        (1.0, 32, 6),
        (0.75, 47, 3),
    ],
)
def test_split_equals_standard(width, resolution, split):
    arch = build_architecture(width=width, max_repeats=1, num_classes=10)
    params = jax.tree.map(jnp.asarray, memory.random_folded_params(arch, seed=3))
    x = _images(resolution)
    reference = _reference(arch, params, x)
    assert _relative_error(_run(arch, params, x, 1), reference) < 1e-5
    assert _relative_error(_run(arch, params, x, split), reference) < 1e-5


@pytest.mark.parametrize(
    "settings",
    [
        dict(residual="expansion"),  # shortcut around the depthwise, inside each group
        dict(bottleneck_activation="relu6", num_classes=0),  # ReLU6 after the summed projection
    ],
    ids=["expansion-shortcut", "relu6-bottleneck"],
)
def test_split_ablation_variants(settings):
    arch = build_architecture(width=0.35, max_repeats=2, **{"num_classes": 10, **settings})
    params = jax.tree.map(jnp.asarray, memory.random_folded_params(arch, seed=4))
    x = _images(36)
    assert _relative_error(_run(arch, params, x, 3), _reference(arch, params, x)) < 1e-5


def test_unrolled_and_first_layer_channel_groups_are_exact():
    """The unrolled loop, and a block 0 with a shortcut (width 0.1: 8 channels in and out),
    where the first-layer trick cannot apply and block 0 is split by channels instead."""
    arch = build_architecture(width=0.1, max_repeats=1, num_classes=10)
    assert arch.blocks[0].shortcut == "bottleneck"
    params = jax.tree.map(jnp.asarray, memory.random_folded_params(arch, seed=5))
    x = _images(32)
    reference = _reference(arch, params, x)
    assert _relative_error(_run(arch, params, x, 3), reference) < 1e-5
    assert _relative_error(_run(arch, params, x, 3, loop="unrolled"), reference) < 1e-5


def test_group_width():
    assert memory.group_width(144, 5) == 32  # 29 rounded up to 8; the 5th group starts at 112
    assert memory.group_width(96, 5) == 20  # 24 would leave the 5th group nothing of its own
    assert memory.group_width(96, 4) == 24
    assert memory.group_width(16, 3) == 6
    assert memory.group_width(32, 1) == 32


# --- Validation ---------------------------------------------------------------------------------


def test_invalid_split_raises_naming_split():
    arch = build_architecture(width=0.35, max_repeats=1)
    n = len(arch.blocks)
    smallest = min(b.expanded_channels for b in arch.blocks)
    for bad in (0, -1, True, 2.0, "4", smallest + 1, (2,) * (n - 1), (2,) * (n + 1), (2,) * (n - 1) + (0,)):
        with pytest.raises(ValueError, match=r"^split"):
            memory.normalize_split(arch, bad)
    x = _images(32, batch=1)
    params = memory.random_folded_params(arch)
    with pytest.raises(ValueError, match=r"^split"):
        memory.split_apply(arch, params, x, 0)
    with pytest.raises(ValueError, match=r"^loop"):
        memory.split_apply(arch, params, x, 2, loop="scan")
    assert memory.normalize_split(arch, 2) == (2,) * n
    assert memory.normalize_split(arch, [1] * n) == (1,) * n


# --- Table 3 ------------------------------------------------------------------------------------


def test_table3_rule_by_hand():
    """1.0/224, 16-bit, batch 1; each cell worked out from Table 2 by hand."""
    result = memory.analytic(build_architecture(width=1.0), 224)
    v2 = {row["size"]: row for row in result["MobileNetV2"]["rows"]}
    # The image: 3 channels at 224x224 (the stem + block 0 operation's input).
    assert v2[224]["bytes"] == 3 * 224 * 224 * 2
    # 112x112 with the first-layer trick: only block 0's 16-channel output (and block 1's input).
    assert (v2[112]["channels"], v2[112]["bytes"]) == (16, 16 * 112 * 112 * 2)  # 401,408 B: the paper's 400K
    # 56x56: block 2 maps 24 -> 24 channels; block 1's output (24) and block 3's input (24) are smaller.
    assert (v2[56]["channels"], v2[56]["bytes"]) == (24 + 24, (24 + 24) * 56 * 56 * 2)
    assert v2[56]["op"] == "block_2"
    assert v2[28]["bytes"] == (32 + 32) * 28 * 28 * 2  # blocks 4-5: the paper's 64/100
    assert v2[14]["bytes"] == (96 + 96) * 14 * 14 * 2  # blocks 11-12
    assert v2[7]["bytes"] == (160 + 320) * 7 * 7 * 2  # block 16
    assert v2[1]["bytes"] == (1280 + 1000) * 2  # pooled features + logits (classifier)
    assert result["MobileNetV2"]["max_bytes"] == 16 * 112 * 112 * 2
    plain = {row["size"]: row for row in result["MobileNetV2_without_first_layer_trick"]["rows"]}
    assert plain[112]["channels"] == 32 + 16  # block 0's input (the stem's output) and output
    # MobileNetV1: the pointwise layer 32 -> 64 at 112x112; its largest single tensor, 64
    # channels, is the paper's cell -- as is every V1 cell.
    v1 = {row["size"]: row for row in result["MobileNetV1"]["rows"]}
    assert v1[112]["bytes"] == (32 + 64) * 112 * 112 * 2
    assert {size: v1[size]["single"] for size in memory.PAPER_TABLE3["MobileNetV1"]} == {
        size: channels for size, (channels, _) in memory.PAPER_TABLE3["MobileNetV1"].items()
    }
    assert v1[112]["single"] * 112 * 112 * 2 == 1_605_632  # the paper's "1600K"
    # Every V2 cell that differs from the paper is explained.
    explained = {int(m.group(1)) for n in result["notes"] if (m := re.match(r"MobileNetV2 (\d+)x", n))}
    assert explained == {56, 14, 7, 1}


def test_table3_other_settings_and_text():
    result = memory.analytic(build_architecture(width=0.5), 97)
    sizes = [row["size"] for row in result["MobileNetV2"]["rows"]]
    assert sizes == [97, 49, 25, 13, 7, 4, 1]  # 'SAME' sizes of an odd input
    assert not result["notes"] and not result["paper_setting"]
    text = memory.format_analytic(memory.analytic(build_architecture(), 224))
    assert "16/401.4" in text and "16/400" in text and "Where the paper differs" in text


def test_plan_split_keeps_the_estimated_peak():
    arch = build_architecture(width=1.0)
    for s in (2, 4, 6):
        plan = memory.plan_split(arch, 224, s)
        peak = max(b for _, b in memory.working_sets(arch, 224, plan))
        assert peak <= max(b for _, b in memory.working_sets(arch, 224, s))
        assert plan[1] == s  # block 1 (96 channels at 112x112) sets the peak
        assert all(p == 1 for p in plan[6:])  # 14x14 and smaller stay whole


# --- Measured -----------------------------------------------------------------------------------


def test_measured_temp_memory_falls():
    """XLA's temporary memory with S=4 at 1.0/64 (one block per row): ~1.7x less split uniformly
    (at this size each group's copy of the 7x7 blocks' weights is a large part of the peak),
    ~2.7x less with the plan, which leaves those blocks whole."""
    result = memory.measure(1.0, 64, 4, max_repeats=1, throughput=False)
    assert result["split"]["temp_bytes"] < result["standard"]["temp_bytes"] / 1.4, result
    assert result["planned"]["temp_bytes"] < result["standard"]["temp_bytes"] / 2.2, result
    assert result["split"]["max_rel_error"] < 1e-5
    assert result["split"]["split"] == [4] * 7


def test_cli_memory(capsys):
    from mnv2_jax import cli

    cli.main(["memory", "--analytic-only", "--json"])
    analytic = json.loads(capsys.readouterr().out)["analytic"]
    assert analytic["MobileNetV2"]["max_kb"] == pytest.approx(401.408)

    cli.main(["memory", "--width", "0.35", "--resolution", "32", "--split", "2", "--repeats", "1", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert {"analytic", "standard", "split", "planned"} <= set(result)
    for key in ("standard", "split"):
        assert result[key]["temp_bytes"] > 0 and result[key]["images_per_sec"] > 0

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["memory", "--split", "0", "--resolution", "32"])
    assert exit_info.value.code == 2
    assert "mnv2 memory: error: split" in capsys.readouterr().err


# --- Notebook -----------------------------------------------------------------------------------
