"""Several hosts on one machine: `mnv2 train` as 2 processes of 1 CPU device each (`jax.distributed`
over a localhost coordinator, gloo collectives) against the same run as 1 process with 2 devices.

`data_shards=2` fixes the input streams, so both layouts train on the same global batches. SIGTERM to
one of the two processes reaches the other through JAX's preemption notice service: both stop at the
same step, write that checkpoint together and exit 143; rerunning both resumes, and the final train
state, the metrics and the summary equal the uninterrupted one-process run's bit for bit.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from test_train import (
    CONFIG_FILE,
    REPO,
    assert_states_identical,
    checkpoint_steps,
    read_text,
    restore_state,
    without_timing,
)

from mnv2_jax import workdir as workdir_lib

STEPS = 30
OVERRIDES = {
    "resolution": 32,
    "max_repeats": 1,
    "batch_size": 32,
    "eval_batch_size": 64,
    "data_shards": 2,
    "total_steps": STEPS,
    "log_every_steps": 10,
    "eval_every_steps": STEPS,
    "checkpoint_every_steps": 10,
    "keep_checkpoints": 5,
}


def _args(workdir: str, data_dir: str) -> list[str]:
    values = {**OVERRIDES, "data_dir": data_dir}
    return [sys.executable, "-m", "mnv2_jax", "train", "--config", CONFIG_FILE, "--workdir", workdir] + [
        f"--config.{k}={v}" for k, v in values.items()
    ]


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k.startswith("JAX_COMPILATION")}
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        **extra,
    )
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two(workdir: str, data_dir: str, tmp_path, tag: str) -> tuple[list[subprocess.Popen], list[str]]:
    port = _free_port()
    processes, logs = [], []
    for i in range(2):
        log_path = str(tmp_path / f"{tag}-process{i}.log")
        env = _env(
            1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)
        )
        with open(log_path, "w") as log:
            processes.append(
                subprocess.Popen(
                    _args(workdir, data_dir),
                    cwd=REPO,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        logs.append(log_path)
    return processes, logs


def _wait(processes: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def data_dir(mnist_data_dir) -> str:
    return mnist_data_dir


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, data_dir):
    """The reference: 1 process, 2 devices (it also prepares the dataset the two processes share)."""
    workdir = str(tmp_path_factory.mktemp("one") / "run")
    result = subprocess.run(
        _args(workdir, data_dir), cwd=REPO, env=_env(2), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return workdir


def test_two_processes_stop_together_and_end_where_one_process_with_two_devices_ends(
    one_process_run, data_dir, tmp_path
):
    workdir = str(tmp_path / "run")
    processes, logs = _start_two(workdir, data_dir, tmp_path, "stopped")
    try:
        deadline = time.time() + 300
        while not checkpoint_steps(workdir):
            assert all(p.poll() is None for p in processes), "\n".join(read_text(p) for p in logs)
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        processes[1].send_signal(signal.SIGTERM)  # one of the two: the other learns it from JAX
    finally:
        codes = _wait(processes)
    texts = [read_text(p) for p in logs]
    assert codes == [143, 143], "\n".join(texts)
    stopped = [re.search(r"SIGTERM: checkpoint at step (\d+) written", t) for t in texts]
    assert all(stopped), "\n".join(texts)
    step = int(stopped[0].group(1))
    assert int(stopped[1].group(1)) == step and 10 <= step < STEPS
    assert checkpoint_steps(workdir)[-1] == step and int(restore_state(workdir).step) == step
    assert workdir_lib.read_summary(workdir) is None

    # Both processes again: they resume at that step and end bit-identical to one process with two
    # devices that was never interrupted (the same global batches, the same collectives).
    processes, logs = _start_two(workdir, data_dir, tmp_path, "resumed")
    codes = _wait(processes)
    texts = [read_text(p) for p in logs]
    assert codes == [0, 0], "\n".join(texts)
    assert f"resuming {workdir} at step {step}/{STEPS}" in texts[0]
    config = workdir_lib.read_config(workdir)
    assert config["provenance"]["process_count"] == 2 and len(config["provenance"]["devices"]) == 2
    assert_states_identical(restore_state(workdir), restore_state(one_process_run))
    records = workdir_lib.read_metrics(workdir)
    assert [r["step"] for r in records] == [10, 20, 30]
    assert without_timing(records) == without_timing(workdir_lib.read_metrics(one_process_run))
    summaries = [workdir_lib.read_summary(w) for w in (workdir, one_process_run)]
    assert summaries[0]["complete"] and without_timing([summaries[0]]) == without_timing([summaries[1]])
    # Process 0 alone reports progress (and writes the metric files); process 1 trains silently.
    assert re.search(r"step +30/30", texts[0]) and not re.search(r"step +\d+/30", texts[1])
