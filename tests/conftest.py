"""Shared test setup: environment before JAX initialises, and small shared models.

The environment is set at import time (pytest imports this file before any test
module), so it reaches JAX in this process and in every subprocess a test starts:

* a persistent compilation cache (default `<repo>/.cache/jax`, gitignored) so
  reruns and subprocesses skip XLA compiles; every entry is cached, however
  small or quick to compile;
* 8 simulated CPU devices for the data-parallel tests (appended to XLA_FLAGS
  unless a device count is already given); single-device code runs on device
  0 as before;
* wandb disabled, TensorFlow's C++ logging quiet.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".cache" / "jax"))
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if "jax" in sys.modules:  # a plugin imported JAX first: the env vars came too late for the cache
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def classification_loss(label_smoothing: float = 0.0):
    """The classification task's training loss as a `make_train_step` loss_fn."""
    from mnv2_jax.tasks.classification.loss import train_loss

    return lambda logits, batch: train_loss(logits, batch["label"], label_smoothing)


def model_for(config, num_classes: int):
    """The module `config` trains (its task's model)."""
    from mnv2_jax.tasks import get_task

    return get_task(config).model(num_classes)


def eval_step_for(model):
    """The classification eval step: per-batch sums of loss, top-1, top-5 and count."""
    from mnv2_jax.config import base_config
    from mnv2_jax.tasks.classification import ClassificationTask

    task = ClassificationTask(base_config())
    return lambda variables, batch: task.eval_outputs(model, variables, batch)


# The tiny model the model tests share: every row of Table 2 with at most two
# blocks each (so stride-2 blocks, identity blocks with shortcuts and both
# kinds of block 0 are all present), width 0.35 and an input size whose
# feature maps are odd on the way down (36 -> 18 -> 9 -> 5 -> 3 -> 2).
TINY = dict(width=0.35, max_repeats=2, num_classes=10)
TINY_RESOLUTION = 36


def random_variables(model, resolution: int, seed: int = 0) -> dict:
    """Variables of `model` with random values, without compiling its init.

    Kernels are He-normal; batch norm gets non-trivial scale, offset and
    moving statistics so that inference-mode batch norm is not the identity
    (a test comparing two variants then sees every layer's effect). `init`
    itself is traced only (`jax.eval_shape`): compiling it costs seconds of
    random-number code on CPU.
    """
    import jax
    import jax.numpy as jnp

    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, resolution, resolution, 3)), train=False)
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        shape = leaf.shape
        if name.endswith("kernel"):
            fan_in = int(np.prod(shape[:-1]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif name.endswith("scale"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("var"):
            value = rng.uniform(0.5, 2.0, shape)
        else:  # bn bias, moving mean, classifier bias
            value = rng.normal(0.0, 0.2, shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@dataclasses.dataclass
class TinyModel:
    """A shared tiny model, its variables and inputs, with jitted functions cached per variant."""

    model: object
    variables: dict
    x: object
    resolution: int
    _cache: dict = dataclasses.field(default_factory=dict)

    def variant(self, **overrides):
        """The same tiny network with other settings (`create_model` keyword arguments)."""
        from mnv2_jax.models.mobilenet_v2 import create_model

        return create_model(**{**TINY, **overrides})

    def features(self, model=None, variables=None, x=None):
        """`(logits, features)` in inference mode; one compile per distinct model."""
        import jax

        model = self.model if model is None else model
        key = ("features", repr(model))
        if key not in self._cache:
            self._cache[key] = jax.jit(lambda v, x: model.apply(v, x, train=False, return_features=True))
        # Full float32 convolutions on every backend (GPUs default to TF32), so that two variants
        # compare to float32 rounding.
        with jax.default_matmul_precision("highest"):
            return self._cache[key](
                self.variables if variables is None else variables, self.x if x is None else x
            )


@pytest.fixture(scope="session")
def tiny():
    import jax

    from mnv2_jax.models.mobilenet_v2 import create_model

    model = create_model(**TINY)
    shape = (2, TINY_RESOLUTION, TINY_RESOLUTION, 3)
    x = jax.numpy.asarray(np.random.default_rng(1).uniform(-1.0, 1.0, shape).astype(np.float32))
    return TinyModel(model, random_variables(model, TINY_RESOLUTION), x, TINY_RESOLUTION)


@pytest.fixture(scope="session")
def mnist_data_dir(tmp_path_factory) -> str:
    """A TFDS data dir with `mnist_offline` prepared (MNV2_TEST_DATA_DIR reuses one between runs)."""
    from mnv2_jax.data.datasets import mnist_offline

    path = os.environ.get("MNV2_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
    mnist_offline.ensure_prepared(path)
    return path


GCS_BUCKET = "mnv2-test"


@pytest.fixture(scope="session")
def gcs_bucket(tmp_path_factory):
    """`gs://mnv2-test` on a local GCS server (`gcp-storage-emulator` as `tests/gcs_emulator.py`
    runs it, in memory, on a free port).

    Every client must be pointed at it, or it goes to the real endpoint: gcsfs (under
    etils.epath, which must not use TensorFlow's gfile) by STORAGE_EMULATOR_HOST, tensorstore
    (orbax's arrays) by TENSORSTORE_GCS_HTTP_URL with a test token. gcsfs's bucket-layout lookup
    uses a gRPC API the emulator lacks, so it is switched off. The variables are set in this
    process for the session, so subprocesses that tests start inherit them.
    """
    import socket
    import subprocess
    import time
    import urllib.request

    try:
        import gcp_storage_emulator  # noqa: F401
    except ImportError:
        pytest.fail("gcp-storage-emulator is not installed (pip install -e '.[test]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("gcs") / "emulator.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "gcs_emulator.py"),
                "start",
                "--host=127.0.0.1",
                f"--port={port}",
                "--in-memory",
                f"--default-bucket={GCS_BUCKET}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"the GCS emulator did not start: {log_path.read_text()}")
            time.sleep(0.1)
    env = {
        "STORAGE_EMULATOR_HOST": url,
        "EPATH_USE_TF": "false",
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # epath decides once per process whether TensorFlow serves gs:// paths: decide again.
    from etils.epath import gpath

    gpath._is_tf_installed.cache_clear()
    try:
        yield f"gs://{GCS_BUCKET}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        gpath._is_tf_installed.cache_clear()
        server.terminate()
        server.wait(timeout=30)
