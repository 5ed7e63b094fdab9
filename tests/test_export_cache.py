"""The on-disk cache of exported steps (`mnv2_jax.export_cache`).

A hit must run exactly the program a miss ran, and both must equal plain `jax.jit`; anything in the key
that changes makes a new entry; a damaged entry or a step `jax.export` cannot handle falls back to
tracing. The real train step of the tiny MNIST config (one block per row of Table 2), on 8 simulated
CPU devices with the batch sharded.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mnv2_jax import config as config_lib
from mnv2_jax import export_cache, optim, steps, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, RES, NUM_CLASSES = 16, 32, 10


@pytest.fixture(scope="module")
def step_setup():
    train.enable_compilation_cache()
    config = config_lib.apply_overrides(
        config_lib.load_config(os.path.join(REPO, "configs", "mnist.py")),
        # one block per row of Table 2: the same kinds of layers, a third of the compile time
        {"batch_size": BATCH, "optim.warmup_epochs": 0.0, "max_repeats": 1},
    )
    model = config_lib.model_from_config(config, NUM_CLASSES)
    tx = optim.create_optimizer(config, steps_per_epoch=10)
    opt = optim.resolve_optim(config)
    step = steps.make_train_step(
        model, tx, label_smoothing=opt["label_smoothing"], ema_decay=opt["ema_decay"]
    )
    mesh = train.data_mesh()
    replicated, by_data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    state = jax.jit(lambda: steps.create_train_state(model, tx, RES, seed=0), out_shardings=replicated)()
    rng = np.random.default_rng(0)
    batch = jax.device_put(
        {
            "image": rng.uniform(-1, 1, (BATCH, RES, RES, 3)).astype(np.float32),
            "label": rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32),
        },
        by_data,
    )
    reference = jax.jit(step, in_shardings=(replicated, by_data), out_shardings=(replicated, replicated))
    return dict(
        config=config, step=step, state=state, batch=batch, replicated=replicated, by_data=by_data,
        reference=jax.device_get(reference(state, batch)),
    )  # fmt: skip


def _cached(setup, cache_dir, key=None, log=None):
    return export_cache.cached_jit(
        setup["step"],
        name="train_step",
        key=key or {"config": setup["config"].to_json()},
        in_shardings=(setup["replicated"], setup["by_data"]),
        out_sharding=setup["replicated"],
        donate_argnums=(0,),  # as in `mnv2 train`; every test here then shares one compiled program
        cache_dir=str(cache_dir),
        log=log,
    )


def _fresh_state(setup):
    return jax.tree.map(jnp.copy, setup["state"])


def _assert_same(a, b):
    la, lb = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_miss_then_hit_run_the_same_program_as_jit(step_setup, tmp_path):
    messages = []
    first = _cached(step_setup, tmp_path, log=messages.append)
    assert first.compile(step_setup["state"], step_setup["batch"]) == "exported"
    files = list(tmp_path.glob("train_step-*.jax_exported"))
    assert len(files) == 1
    state = _fresh_state(step_setup)
    out_first = first(state, step_setup["batch"])
    assert jax.tree.leaves(state.params)[0].is_deleted()  # the state was donated ...
    assert not step_setup["batch"]["image"].is_deleted()  # ... the batch was not
    # A new function object (as in a new process) loads the entry instead of tracing.
    second = _cached(step_setup, tmp_path, log=messages.append)
    out_second = second(_fresh_state(step_setup), step_setup["batch"])
    assert second.last_source == "disk"
    assert any("program disk" in m for m in messages)
    _assert_same(out_first, step_setup["reference"])
    _assert_same(out_second, step_setup["reference"])
    # The outputs keep their structure.
    new_state, metrics = out_second
    assert isinstance(new_state, steps.TrainState) and set(metrics) == set(step_setup["reference"][1])
    assert int(new_state.step) == 1


def test_a_different_key_is_a_different_entry(step_setup, tmp_path):
    _cached(step_setup, tmp_path).compile(step_setup["state"], step_setup["batch"])
    assert _cached(step_setup, tmp_path).compile(step_setup["state"], step_setup["batch"]) == "disk"
    other = _cached(step_setup, tmp_path, key={"config": "another"})
    assert other.compile(step_setup["state"], step_setup["batch"]) == "exported"
    assert len(list(tmp_path.glob("train_step-*.jax_exported"))) == 2


def test_new_shapes_or_dtypes_get_their_own_program(tmp_path):
    fn = export_cache.cached_jit(lambda x: x * 2 + 1, name="affine", key={}, cache_dir=str(tmp_path))
    for x in (jnp.arange(3.0), jnp.arange(4.0), jnp.arange(4), jnp.arange(3.0)):
        out = fn(x)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(x) * 2 + 1)
        assert out.dtype == x.dtype
    assert len(list(tmp_path.glob("affine-*.jax_exported"))) == 3


def test_a_damaged_entry_is_traced_again(step_setup, tmp_path):
    _cached(step_setup, tmp_path).compile(step_setup["state"], step_setup["batch"])
    (path,) = tmp_path.glob("*.jax_exported")
    path.write_bytes(b"not a pickle")
    messages = []
    again = _cached(step_setup, tmp_path, log=messages.append)
    _assert_same(again(_fresh_state(step_setup), step_setup["batch"]), step_setup["reference"])
    assert again.last_source == "exported" and any("unreadable" in m for m in messages)


def test_no_cache_dir_or_the_switch_means_plain_jit(monkeypatch):
    plain = export_cache.cached_jit(lambda x: {"twice": x * 2}, name="plain", key={}, cache_dir=None)
    np.testing.assert_array_equal(np.asarray(plain(jnp.arange(3.0))["twice"]), [0.0, 2.0, 4.0])
    assert plain.last_source == "jit"
    monkeypatch.setenv("MNV2_EXPORT_CACHE", "0")
    assert export_cache.default_cache_dir() is None
    monkeypatch.setenv("MNV2_EXPORT_CACHE", "1")
    base = jax.config.jax_compilation_cache_dir  # the suite's shared cache (tests/conftest.py)
    assert base and export_cache.default_cache_dir() == os.path.join(base, "mnv2_exported")


def test_a_step_export_cannot_handle_falls_back_to_jit(tmp_path):
    def with_callback(x):
        jax.debug.callback(lambda v: None, x)
        return x * 2

    messages = []
    fn = export_cache.cached_jit(
        with_callback, name="cb", key={}, cache_dir=str(tmp_path), log=messages.append
    )
    np.testing.assert_array_equal(np.asarray(fn(jnp.arange(3.0))), [0.0, 2.0, 4.0])
    assert fn.last_source == "jit" and any("not exported" in m for m in messages)
    assert not list(tmp_path.glob("*.jax_exported"))


def test_an_entry_that_does_not_fit_falls_back_to_jit(tmp_path):
    def affine(x):
        return x * 2 + 1

    export_cache.cached_jit(affine, name="affine", key={}, cache_dir=str(tmp_path))(jnp.arange(3.0))
    (entry,) = tmp_path.glob("affine-*.jax_exported")
    other = tmp_path / "other"
    export_cache.cached_jit(affine, name="affine", key={}, cache_dir=str(other))(jnp.arange(4.0))
    (wrong,) = other.glob("affine-*.jax_exported")
    entry.write_bytes(wrong.read_bytes())  # an entry for shape (4,) under the key of shape (3,)
    messages = []
    fn = export_cache.cached_jit(affine, name="affine", key={}, cache_dir=str(tmp_path), log=messages.append)
    np.testing.assert_array_equal(np.asarray(fn(jnp.arange(3.0))), [1.0, 3.0, 5.0])
    assert fn.last_source == "jit" and any("cannot use" in m for m in messages)


def test_a_step_too_big_for_host_memory_warns_and_names_what_fits(tmp_path, monkeypatch):
    from mnv2_jax import allocator

    compiles = []
    original = jax.stages.Lowered.compile

    def spy(self, *args, **kwargs):
        compiles.append(kwargs.get("compiler_options"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(jax.stages.Lowered, "compile", spy)
    monkeypatch.setattr(allocator, "available_host_bytes", lambda: 1)  # nothing fits in 1 byte
    messages = []
    fn = export_cache.cached_jit(
        lambda x: x * 3, name="big", key={}, cache_dir=str(tmp_path), log=messages.append
    )
    np.testing.assert_array_equal(np.asarray(fn(jnp.arange(3.0))), [0.0, 3.0, 6.0])
    assert compiles == [None]  # compiled once, with XLA's default options
    (warning,) = [m for m in messages if "may be killed for memory" in m]
    assert "smaller batch size" in warning and "GiB of host memory" in warning
    # A step that fits says nothing.
    monkeypatch.setattr(allocator, "available_host_bytes", lambda: 2**40)
    messages.clear()
    fits = export_cache.cached_jit(
        lambda x: x * 5, name="big", key={}, cache_dir=str(tmp_path), log=messages.append
    )
    fits(jnp.arange(3.0))
    assert not [m for m in messages if "WARNING" in m]
