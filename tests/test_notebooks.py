"""Every notebook in notebooks/ runs top to bottom without an error, in its fast mode.

Each is executed with nbclient in a fresh `python3` kernel with the working directory
`notebooks/` and `MNV2_FAST=1` (well under a minute each), wandb disabled, the test suite's
persistent compilation cache (`JAX_COMPILATION_CACHE_DIR`) and a temporary directory for the
runs the notebooks train (`MNV2_RUNS`), so that every test run trains from scratch. The
kernel sees one CPU device, as a user's notebook does (the suite's 8 simulated devices are
for the data-parallel tests).
"""

from __future__ import annotations

import os
import pathlib
import re
import time

import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT = 300  # seconds per cell; fast-mode cells take a few seconds to a minute


def notebook_env(runs_dir: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ)
    xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")).strip()
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    else:
        env.pop("XLA_FLAGS", None)
    env.update(MNV2_FAST="1", WANDB_MODE="disabled", MNV2_RUNS=str(runs_dir))
    env.pop("MPLBACKEND", None)  # the kernel's inline backend renders the figures into the outputs
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:  # conftest sets it; pass it through explicitly
        env["JAX_COMPILATION_CACHE_DIR"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
    return env


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_runs_in_fast_mode(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    start = time.time()
    try:
        client.execute(env=notebook_env(tmp_path / "runs"), cwd=str(NOTEBOOKS))
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name}: a cell failed:\n{e}", pytrace=False)
    except nbclient.exceptions.CellTimeoutError as e:
        pytest.fail(f"{path.name}: a cell ran past {CELL_TIMEOUT} s:\n{e}", pytrace=False)
    seconds = time.time() - start
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    print(f"{path.name}: {seconds:.0f} s")
