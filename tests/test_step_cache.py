"""The on-disk cache of compiled steps (`mnv2_jax.train.step_cache`).

A hit must run exactly the program a miss ran, and both must equal plain `jax.jit`; anything in the key
that changes makes a new entry; a damaged or foreign entry is compiled again; a step whose executable
cannot be serialised still runs. The real train step of the tiny MNIST config (one block per row of Table 2), on 8 simulated
CPU devices with the batch sharded.
"""

from __future__ import annotations

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mnv2_jax import config as config_lib
from mnv2_jax.train import loop as train
from mnv2_jax.train import optim, step_cache
from mnv2_jax.train import step as steps

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
    return step_cache.cached_jit(
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
    assert first.compile(step_setup["state"], step_setup["batch"]) == "compiled"
    files = list(tmp_path.glob("train_step-*.xla_step"))
    assert len(files) == 1
    state = _fresh_state(step_setup)
    out_first = first(state, step_setup["batch"])
    assert jax.tree.leaves(state.params)[0].is_deleted()  # the state was donated ...
    assert not step_setup["batch"]["image"].is_deleted()  # ... the batch was not
    # A new function object (as in a new process) loads the entry instead of tracing and compiling.
    second = _cached(step_setup, tmp_path, log=messages.append)
    state = _fresh_state(step_setup)
    out_second = second(state, step_setup["batch"])
    assert second.last_source == "disk"
    assert any("loaded train_step-" in m for m in messages)
    assert jax.tree.leaves(state.params)[0].is_deleted()  # the loaded executable donates too
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
    assert other.compile(step_setup["state"], step_setup["batch"]) == "compiled"
    assert len(list(tmp_path.glob("train_step-*.xla_step"))) == 2


def test_new_shapes_or_dtypes_get_their_own_program(tmp_path):
    fn = step_cache.cached_jit(lambda x: x * 2 + 1, name="affine", key={}, cache_dir=str(tmp_path))
    for x in (jnp.arange(3.0), jnp.arange(4.0), jnp.arange(4), jnp.arange(3.0)):
        out = fn(x)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(x) * 2 + 1)
        assert out.dtype == x.dtype
    assert len(list(tmp_path.glob("affine-*.xla_step"))) == 3


def test_a_damaged_entry_is_compiled_again(step_setup, tmp_path):
    _cached(step_setup, tmp_path).compile(step_setup["state"], step_setup["batch"])
    (path,) = tmp_path.glob("*.xla_step")
    path.write_bytes(b"not a pickle")
    messages = []
    again = _cached(step_setup, tmp_path, log=messages.append)
    _assert_same(again(_fresh_state(step_setup), step_setup["batch"]), step_setup["reference"])
    assert again.last_source == "compiled" and any("cannot use" in m for m in messages)


def test_no_cache_dir_or_the_switch_means_plain_jit(monkeypatch):
    plain = step_cache.cached_jit(lambda x: {"twice": x * 2}, name="plain", key={}, cache_dir=None)
    np.testing.assert_array_equal(np.asarray(plain(jnp.arange(3.0))["twice"]), [0.0, 2.0, 4.0])
    assert plain.last_source == "jit"
    monkeypatch.setenv("MNV2_STEP_CACHE", "0")
    assert step_cache.default_cache_dir() is None
    monkeypatch.setenv("MNV2_STEP_CACHE", "1")
    base = jax.config.jax_compilation_cache_dir  # the suite's shared cache (tests/conftest.py)
    assert base and step_cache.default_cache_dir() == os.path.join(base, "mnv2_steps")
    jax.config.update("jax_enable_compilation_cache", False)  # JAX's cache off: this one too
    try:
        assert step_cache.default_cache_dir() is None
    finally:
        jax.config.update("jax_enable_compilation_cache", True)


def test_a_step_that_cannot_be_serialised_runs_and_keeps_nothing(tmp_path):
    def with_callback(x):
        jax.debug.callback(lambda v: None, x)
        return x * 2

    messages = []
    fn = step_cache.cached_jit(with_callback, name="cb", key={}, cache_dir=str(tmp_path), log=messages.append)
    np.testing.assert_array_equal(np.asarray(fn(jnp.arange(3.0))), [0.0, 2.0, 4.0])
    assert fn.last_source == "jit" and any("not kept on disk" in m for m in messages)
    assert not list(tmp_path.glob("*.xla_step"))


def test_an_entry_for_other_arguments_is_compiled_again(tmp_path):
    def affine(x):
        return x * 2 + 1

    step_cache.cached_jit(affine, name="affine", key={}, cache_dir=str(tmp_path))(jnp.arange(3.0))
    (entry,) = tmp_path.glob("affine-*.xla_step")
    other = tmp_path / "other"
    step_cache.cached_jit(affine, name="affine", key={}, cache_dir=str(other))(jnp.arange(4.0))
    (wrong,) = other.glob("affine-*.xla_step")
    right = pickle.loads(entry.read_bytes())
    # An entry for shape (4,) under the name of shape (3,): its recorded key gives it away ...
    entry.write_bytes(wrong.read_bytes())
    messages = []
    fn = step_cache.cached_jit(affine, name="affine", key={}, cache_dir=str(tmp_path), log=messages.append)
    np.testing.assert_array_equal(np.asarray(fn(jnp.arange(3.0))), [1.0, 3.0, 5.0])
    assert fn.last_source == "compiled" and any("written for key" in m for m in messages)
    # ... and so do its executable's inputs, should the recorded key match.
    entry.write_bytes(pickle.dumps({**pickle.loads(wrong.read_bytes()), "digest": right["digest"]}))
    messages.clear()
    fn = step_cache.cached_jit(affine, name="affine", key={}, cache_dir=str(tmp_path), log=messages.append)
    np.testing.assert_array_equal(np.asarray(fn(jnp.arange(3.0))), [1.0, 3.0, 5.0])
    assert fn.last_source == "compiled" and any("inputs differ" in m for m in messages)
    # Rewritten: the next process loads it.
    again = step_cache.cached_jit(affine, name="affine", key={}, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(np.asarray(again(jnp.arange(3.0))), [1.0, 3.0, 5.0])
    assert again.last_source == "disk"


def test_a_miss_compiles_afresh_and_keeps_one_copy(tmp_path):
    """On a miss, XLA's persistent cache is neither read nor written: the step's file holds the
    executable, and one that XLA had loaded from its cache would not run once serialised again
    ("Function ... not found"). A plain `jax.jit` compile still uses XLA's cache."""
    from jax.experimental.compilation_cache import compilation_cache

    xla_dir, steps_dir = tmp_path / "xla", tmp_path / "steps"
    previous = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
        jax.config.jax_persistent_cache_min_entry_size_bytes,
    )
    jax.config.update("jax_compilation_cache_dir", str(xla_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    compilation_cache.reset_cache()
    x = jnp.arange(5.0)

    def cached(cache_dir):
        return step_cache.cached_jit(lambda v: v * 7 - 2, name="once", key={}, cache_dir=cache_dir)

    try:
        first = cached(str(steps_dir))
        np.testing.assert_array_equal(np.asarray(first(x)), np.arange(5.0) * 7 - 2)
        assert first.last_source == "compiled" and len(list(steps_dir.glob("once-*.xla_step"))) == 1
        assert not list(xla_dir.glob("jit_flat-*"))  # no second copy (the step's module is `flat`)
        assert jax.config.jax_enable_compilation_cache  # switched back on
        # The same program through plain jit lands in XLA's cache ...
        plain = cached(None)
        np.testing.assert_array_equal(np.asarray(plain(x)), np.arange(5.0) * 7 - 2)
        assert plain.last_source == "jit" and len(list(xla_dir.glob("jit_flat-*"))) == 1
        # ... and a later miss still compiles it afresh, so that the entry it writes runs.
        for entry in steps_dir.glob("*.xla_step"):
            entry.unlink()
        assert cached(str(steps_dir)).compile(x) == "compiled"
        loaded = cached(str(steps_dir))
        np.testing.assert_array_equal(np.asarray(loaded(x)), np.arange(5.0) * 7 - 2)
        assert loaded.last_source == "disk"
    finally:
        jax.config.update("jax_compilation_cache_dir", previous[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", previous[2])
        compilation_cache.reset_cache()


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
    fn = step_cache.cached_jit(
        lambda x: x * 3, name="big", key={}, cache_dir=str(tmp_path), log=messages.append, batch_size=3
    )
    np.testing.assert_array_equal(np.asarray(fn(jnp.arange(3.0))), [0.0, 3.0, 6.0])
    assert compiles == [None]  # compiled once, with XLA's default options
    (warning,) = [m for m in messages if "may be killed for memory" in m]
    # Which batch fits is `allocator.fitting_batch`'s (tested there); in 1 byte none does.
    assert (
        "Not even batch size 1" in warning and "batch size 3" in warning and "GiB of host memory" in warning
    )
    # A step that fits says nothing.
    monkeypatch.setattr(allocator, "available_host_bytes", lambda: 2**40)
    messages.clear()
    fits = step_cache.cached_jit(
        lambda x: x * 5, name="big", key={}, cache_dir=str(tmp_path), log=messages.append
    )
    fits(jnp.arange(3.0))
    assert not [m for m in messages if "WARNING" in m]
