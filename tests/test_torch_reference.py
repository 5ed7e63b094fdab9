"""The PyTorch reference (benchmarks/torch_mnv2.py) is the same network as ours: parameter counts,
shapes, TF padding, the slim optimizer and, with our weights copied in, the same logits.

torch is part of the test extra (`pip install -e '.[test]'`, the CPU build), so CI runs these; a
checkout without torch skips them.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

torch = pytest.importorskip("torch")

from mnv2_jax import accounting  # noqa: E402
from mnv2_jax.spec import build_architecture, output_size  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_mnv2.py"


@pytest.fixture(scope="module")
def tm() -> Iterator[ModuleType]:
    """benchmarks/torch_mnv2.py imported by path (benchmarks/ is not a package).

    One intra-op thread while these tests run: the inputs are tiny, and on a busy
    machine OpenMP's barriers make multi-threaded tiny ops hundreds of times slower.
    """
    spec = importlib.util.spec_from_file_location("torch_mnv2", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield module
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("width", [0.35, 1.0])
def test_parameter_counts_match_accounting(tm: ModuleType, width: float) -> None:
    model = tm.build_model(width)
    expected = accounting.summary(build_architecture(width=width), 224)
    counts = tm.count_parameters(model)
    assert counts["params"] == expected["params"]
    assert counts["params_bn"] == expected["params_bn"]
    # Every parameter is either a conv/classifier weight, the classifier bias, or BN.
    assert sum(p.numel() for p in model.parameters()) == expected["params"] + expected["params_bn"]
    if width == 1.0:  # TF-Slim's published table: 1.0/224 has 3.47M parameters.
        assert round(counts["params"] / 1e6, 2) == 3.47


def small(tm: ModuleType, **kwargs) -> torch.nn.Module:
    """A width-0.35 network with at most 2 blocks per row of Table 2 (every stride and shortcut kind)."""
    return tm.TorchMobileNetV2(build_architecture(width=0.35, max_repeats=2, **kwargs))


@pytest.mark.parametrize("residual", ["bottleneck", "expansion", "none"])
def test_output_shape_small_input(tm: ModuleType, residual: str) -> None:
    torch.manual_seed(0)
    model = small(tm, residual=residual, num_classes=10).eval()
    with torch.inference_mode():
        logits = model(torch.rand(2, 3, 33, 33) * 2 - 1)
    assert logits.shape == (2, 10)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_spatial_sizes_follow_spec(tm: ModuleType) -> None:
    """Odd and even resolutions give TF 'SAME' output sizes at every stride-2 layer."""
    model = small(tm).eval()
    for resolution in (33, 64):
        size = output_size(resolution, model.arch.stem.stride)
        with torch.inference_mode():
            x = model.stem(torch.zeros(1, 3, resolution, resolution))
            assert x.shape[-2:] == (size, size)
            for block, module in zip(model.arch.blocks, model.blocks):
                x = module(x)
                size = output_size(size, block.stride)
                assert x.shape[1:] == (block.out_channels, size, size)


def test_tf_same_padding_is_bottom_right(tm: ModuleType) -> None:
    """Stride-2 3x3 on an even input: TF pads 0 top/left, 1 bottom/right (not torch's 1/1)."""
    conv = tm.SameConv2d(4, 4, 3, stride=2, groups=4)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(
            torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, stride=2, groups=4
        )
        symmetric = torch.nn.functional.conv2d(x, conv.weight, stride=2, padding=1, groups=4)
        got = conv(x)
    assert got.shape == expected.shape == (1, 4, 4, 4)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, symmetric)


def test_train_step_updates_everything(tm: ModuleType) -> None:
    """One slim-recipe step changes weights and BN running statistics; decay only where it belongs."""
    torch.manual_seed(0)
    model = small(tm, num_classes=10)
    groups = tm.parameter_groups(model)
    decayed = {id(p) for p in groups[0]["params"]}
    assert id(model.classifier.weight) in decayed and id(model.classifier.bias) not in decayed
    assert id(model.blocks.block_1.depthwise.conv.weight) not in decayed
    assert id(model.blocks.block_1.expand.conv.weight) in decayed
    assert id(model.stem.bn.weight) not in decayed

    opt = tm.make_optimizer(model, batch_size=4)
    before = model.stem.conv.weight.detach().clone()
    running = model.head.bn.running_mean.detach().clone()
    model.train()
    loss = torch.nn.functional.cross_entropy(
        model(torch.rand(4, 3, 32, 32) * 2 - 1), torch.arange(4), label_smoothing=0.1
    )
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert not torch.equal(model.stem.conv.weight, before)
    assert not torch.equal(model.head.bn.running_mean, running)
    state = opt.state[model.stem.conv.weight]
    # The accumulator starts at 1 and moves by (1 - decay) * g**2 only.
    assert torch.all(state["ms"] >= 0.9)


def test_slim_rmsprop_matches_formula(tm: ModuleType) -> None:
    """TF1 RMSProp: eps inside the sqrt, accumulator from 1, lr applied before momentum."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = tm.SlimRMSprop([p], lr=0.1, decay=0.9, momentum=0.9, eps=1.0, weight_decay=0.5)
    ms, mom, value = torch.ones(2), torch.zeros(2), p.detach().clone()
    for g in (torch.tensor([0.3, -0.4]), torch.tensor([1.0, 2.0])):
        p.grad = g.clone()
        opt.step()
        full = g + 0.5 * value
        ms = 0.9 * ms + 0.1 * full**2
        mom = 0.9 * mom + 0.1 * full / torch.sqrt(ms + 1.0)
        value = value - mom
        torch.testing.assert_close(p.detach(), value)


def test_same_logits_as_ours_with_our_weights(tm: ModuleType) -> None:
    """Our Flax model's variables (random weights and batch-norm statistics) copied into the twin:
    eval-mode logits agree to float32 rounding, at an odd resolution (TF 'SAME' padding), with
    every stride and both kinds of block (with and without the bottleneck shortcut)."""
    import jax
    import numpy as np
    from flax.traverse_util import flatten_dict

    from mnv2_jax.models.mobilenet_v2 import MobileNetV2

    arch = build_architecture(width=0.35, max_repeats=2, num_classes=10)
    model = MobileNetV2(arch)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 33, 33, 3)).astype(np.float32)
    # Random weights and batch-norm statistics (away from 0/1, so that a swapped mean and variance,
    # or scale and offset, would show), drawn in numpy: no compile for `init`, only its shapes.
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(0.0, (2.0 / np.prod(leaf.shape[:-1])) ** 0.5, leaf.shape).astype(np.float32)
        low, high = (0.5, 1.5) if name in ("scale", "var") else (-0.5, 0.5)
        return rng.uniform(low, high, leaf.shape).astype(np.float32)

    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    expected = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x))

    twin = tm.TorchMobileNetV2(arch).eval()
    state = {}
    for path, value in flatten_dict(variables).items():
        _, *names, leaf = path  # (collection, module names..., leaf)
        value = np.asarray(value)
        if leaf == "kernel" and value.ndim == 4:  # conv (h, w, in, out) -> (out, in, h, w); depthwise
            value = value.transpose(3, 2, 0, 1)  # (h, w, 1, c) -> (c, 1, h, w), as torch's groups=c
        elif leaf == "kernel":  # classifier (in, out) -> (out, in)
            value = value.T
        names = ["blocks", *names] if names[0].startswith("block_") else names
        torch_leaf = {
            "kernel": "weight",
            "scale": "weight",
            "bias": "bias",
            "mean": "running_mean",
            "var": "running_var",
        }[leaf]
        state[".".join([*names, torch_leaf])] = torch.from_numpy(np.array(value))
    missing, unexpected = twin.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    with torch.inference_mode():
        got = twin(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(expected[0], expected[1])  # the inputs differ, so must the logits
