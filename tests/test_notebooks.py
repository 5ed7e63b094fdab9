"""Every notebook in notebooks/ runs top to bottom without an error, in its fast mode.

Each is executed with nbclient in a fresh `python3` kernel with the working directory
`notebooks/` and `MNV2_FAST=1` (well under a minute each), wandb disabled, the test suite's
persistent compilation cache (`JAX_COMPILATION_CACHE_DIR`) and a temporary directory for the
runs the notebooks train (`MNV2_RUNS`), so that every test run trains from scratch. The
kernel sees one CPU device, as a user's notebook does (the suite's 8 simulated devices are
for the data-parallel tests).

A hang fails the test in under a minute: a cell whose kernel (with the kernel's child
processes) gains less than MIN_CPU seconds of CPU time in IDLE_LIMIT seconds is waiting on
nothing -- a kernel at work gains seconds, however loaded the machine; an idle one gains
hundredths -- so `HangWatch` dumps the kernel's and this process's thread stacks
(`faulthandler`) and kills the kernel, which nbclient reports at once. CELL_TIMEOUT is the
backstop for a cell that computes forever; it is wide because cold fast-mode cells are slow:
with an empty compilation cache at load 12 on 2 cores, ablation_plots' training cell took
212 s (72 s of kernel CPU) and train_offline's 147 s.

nbclient's stand-in for the Output widget is switched off (`widget_registry = {}`; the cell's
outputs then stay in the cell). It answers each output the kernel routes into an Output widget
(model_explorer's panel) with a comm message sent on the kernel's shell socket, while nbclient is
awaiting the cell's execute_reply on that same socket; now and then the reply's wake-up is lost
and nbclient waits out the whole cell timeout before its final poll finds the reply already there
and the cell passes (jupyter/nbclient#312). Measured with nbclient 0.11.0, ipykernel 7.4.0,
pyzmq 27.3.0 and ipywidgets 8.1.9: a cell printing 200 times into an Output widget took the
whole 15 s timeout in 3 of 19 runs with the stand-in and in none of 25 without.
"""

from __future__ import annotations

import collections
import faulthandler
import os
import pathlib
import re
import signal
import threading
import time

import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
IDLE_LIMIT = 40  # seconds a cell's kernel may go without MIN_CPU seconds of CPU before it counts as hung
MIN_CPU = 1.0  # an idle kernel used 0.01 s in 40 s here
CELL_TIMEOUT = 300  # seconds of wall time per cell: the backstop for a cell that never stops computing


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


def kernel_setup(dump: pathlib.Path) -> str:
    """Code for a first cell: the kernel writes its threads' stacks into `dump` on SIGUSR1, and when
    a cell runs to 5 s short of CELL_TIMEOUT."""
    return (
        "import faulthandler as _faulthandler, signal as _signal\n"
        f"_stack_dump = open({str(dump)!r}, 'w')\n"
        "_faulthandler.register(_signal.SIGUSR1, file=_stack_dump, all_threads=True)\n"
        "get_ipython().events.register('pre_run_cell', lambda *_: "
        f"_faulthandler.dump_traceback_later({CELL_TIMEOUT - 5}, file=_stack_dump))\n"
        "get_ipython().events.register('post_run_cell', lambda *_: _faulthandler.cancel_dump_traceback_later())\n"
    )


class HangWatch:
    """Kills the kernel of a cell that has waited on nothing for IDLE_LIMIT seconds, after dumping
    the kernel's stacks (SIGUSR1, see `kernel_setup`) and this process's into `client_dump`.

    nbclient's hooks mark the cell's start and end; a thread samples the CPU time of the kernel
    and its children once a second."""

    def __init__(self, client, client_dump, idle_limit: float = IDLE_LIMIT) -> None:
        self.client, self.client_dump, self.idle_limit = client, client_dump, idle_limit
        self.hung: str | None = None
        self._cell: int | None = None
        self._samples: collections.deque = collections.deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def cell_started(self, cell_index: int, **_) -> None:
        self._samples.clear()
        self._cell = cell_index
        faulthandler.dump_traceback_later(CELL_TIMEOUT - 5, file=self.client_dump)

    def cell_done(self, **_) -> None:
        self._cell = None
        faulthandler.cancel_dump_traceback_later()

    def __enter__(self) -> HangWatch:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        faulthandler.cancel_dump_traceback_later()

    def _kernel_cpu(self, pid: int) -> float:
        import psutil

        kernel = psutil.Process(pid)
        total = sum(kernel.cpu_times()[:4])  # user, system and those of its finished children
        for child in kernel.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return total

    def _watch(self) -> None:
        import psutil

        while not self._stop.wait(1.0):
            cell = self._cell
            pid = getattr(getattr(self.client.km, "provisioner", None), "pid", None)
            if cell is None or pid is None:
                continue
            try:
                now, cpu = time.monotonic(), self._kernel_cpu(pid)
            except psutil.NoSuchProcess:
                continue
            self._samples.append((now, cpu))
            while now - self._samples[0][0] > self.idle_limit:
                then, cpu_then = self._samples.popleft()
                if cpu - cpu_then < MIN_CPU and self._cell == cell:
                    self.hung = (
                        f"cell {cell} hung: its kernel used {cpu - cpu_then:.2f} s of CPU "
                        f"in the last {now - then:.0f} s"
                    )
                    os.kill(pid, signal.SIGUSR1)
                    time.sleep(1.0)
                    faulthandler.dump_traceback(file=self.client_dump)
                    os.kill(pid, signal.SIGKILL)  # nbclient sees the dead kernel within a second
                    self._cell = None
                    break


def stacks(*dumps: tuple[str, pathlib.Path]):
    """A function giving the dumps' text, read when it is called (after the dumps are written)."""
    return lambda: "".join(
        f"\n--- {name} thread stacks:\n" + (dump.read_text() if dump.exists() else "(none)\n")
        for name, dump in dumps
    )


def execute(nb, tmp_path: pathlib.Path, name: str, idle_limit: float = IDLE_LIMIT) -> None:
    """Run `nb` in fast mode under a HangWatch; a failing, timed-out or hung cell fails the test."""
    import nbclient
    import nbformat

    kernel_stacks, client_stacks = tmp_path / "kernel_stacks.txt", tmp_path / "client_stacks.txt"
    nb.cells.insert(0, nbformat.v4.new_code_cell(kernel_setup(kernel_stacks)))
    dumps = stacks(("kernel", kernel_stacks), ("test process", client_stacks))
    with open(client_stacks, "w") as client_dump:
        client = nbclient.NotebookClient(
            nb,
            timeout=CELL_TIMEOUT,
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOKS)}},
        )
        client.widget_registry = {}  # no Output-widget stand-in: see the module docstring
        with HangWatch(client, client_dump, idle_limit) as watch:
            client.on_cell_execute = watch.cell_started
            client.on_cell_executed = watch.cell_done
            try:
                client.execute(env=notebook_env(tmp_path / "runs"), cwd=str(NOTEBOOKS))
            except nbclient.exceptions.CellExecutionError as e:
                pytest.fail(f"{name}: a cell failed:\n{e}", pytrace=False)
            except nbclient.exceptions.CellTimeoutError as e:
                pytest.fail(f"{name}: a cell ran past {CELL_TIMEOUT} s:\n{e}{dumps()}", pytrace=False)
            except nbclient.exceptions.DeadKernelError as e:
                why = watch.hung or f"the kernel died: {e}"
                pytest.fail(f"{name}: {why}{dumps() if watch.hung else ''}", pytrace=False)


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_runs_in_fast_mode(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")

    nb = nbformat.read(path, as_version=4)
    start = time.time()
    execute(nb, tmp_path, path.name)
    seconds = time.time() - start
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    print(f"{path.name}: {seconds:.0f} s")


def test_a_hung_cell_fails_with_the_kernels_stack(tmp_path):
    """A cell that waits on nothing (here: a long sleep) fails once the watch's idle limit has
    passed (3 s here instead of IDLE_LIMIT), naming the cell, with the kernel's stack at the sleep."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time\ntime.sleep(600)")])
    with pytest.raises(pytest.fail.Exception) as failure:
        execute(nb, tmp_path, "sleeper", idle_limit=3)
    message = str(failure.value)
    assert "sleeper: cell 1 hung" in message
    assert "--- kernel thread stacks:" in message and "in <module>" in message.split("--- test process")[0]
