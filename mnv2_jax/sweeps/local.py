"""The local sweep runner: `mnv2 sweep run FILE --workdir ROOT`.

Each run is a subprocess `python -m mnv2_jax train --config CONFIG --workdir ROOT/NAME
--config.k=v ...` with its output in `ROOT/NAME/train.log`; runs whose `summary.json` says
`"complete": true` are skipped, interrupted ones resume (the train command resumes by itself), a
failing run does not stop the others. Ctrl-C or SIGTERM sends SIGTERM to the running runs (they
checkpoint and exit) and stops; rerun the same command to go on. The root gets the sweep's
manifest (`<sweep name>.sweep.json`, every run's name) and every run folder its `sweep.json`.
Runs share a persistent XLA compilation cache: `$JAX_COMPILATION_CACHE_DIR` if set, else
`ROOT/.jax_cache`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from mnv2_jax import workdir as workdir_lib
from mnv2_jax.sweeps.sweep_file import (
    CACHE_DIR,
    Run,
    Sweep,
    manifest,
    stale_keys,
    sweep_record,
    train_args,
    validate_global_overrides,
)

LOG_FILE = workdir_lib.LOG


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f.readlines()[-50:] if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _progress_line(path: str) -> str:
    """The last progress line a run's train.log holds ("step 120/200 ... ETA 00:41", "compiling ...")."""
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()[-50:]
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith(("step ", "eval at", "compiling", "resuming")):
            return " ".join(line.split())[:70]
    return "starting"


@dataclasses.dataclass
class SweepResult:
    """What a local sweep invocation did; `exit_code` is non-zero if a run failed or it was stopped."""

    total: int
    done: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)  # name, exit code, log
    interrupted: list[str] = dataclasses.field(default_factory=list)
    not_started: list[str] = dataclasses.field(default_factory=list)
    stale: list[str] = dataclasses.field(default_factory=list)  # complete, but with another config
    signal: int | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.signal is not None:
            return 128 + self.signal
        return 1 if self.failed else 0


@dataclasses.dataclass
class _Running:
    run: Run
    process: subprocess.Popen
    log_path: str
    started: float
    log_file: Any


def run_sweep(
    sweep: Sweep,
    root: str,
    global_overrides: dict[str, Any] | None = None,
    parallel: int = 1,
    *,
    command_prefix: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    log: Callable[[str], None] | None = None,
    poll_interval: float = 0.5,
    stop_timeout: float = 600.0,
) -> SweepResult:
    """Run every incomplete run of `sweep` under `root`, `parallel` at a time.

    `command_prefix` replaces `python -m mnv2_jax` (tests use a fake trainer). Completed runs
    are skipped; the others start (or resume: the train command resumes a workdir by itself).
    Progress: a line as each run starts and ends (k of N, elapsed, time left); with the default
    `log` (the console) on a terminal also a live bar showing the running runs' last log lines.
    """
    from mnv2_jax import progress

    console = log is None
    log = progress.say if log is None else log
    global_overrides = dict(global_overrides or {})
    validate_global_overrides(sweep, global_overrides)
    if parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {parallel}")
    if workdir_lib.is_local(root):
        root = os.path.abspath(root)
    workdir_lib.ensure_writable(root, "--workdir")
    workdir_lib.write_sweep_manifest(root, manifest(sweep))
    prefix = list(command_prefix or (sys.executable, "-m", "mnv2_jax"))
    child_env = dict(os.environ if env is None else env)
    # One compilation cache for the whole sweep (an explicit setting wins, e.g. the test suite's);
    # under a gs:// root, each run's default local cache.
    if workdir_lib.is_local(root):
        child_env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(root, CACHE_DIR))
    child_env.setdefault("PYTHONUNBUFFERED", "1")

    start = time.time()
    result = SweepResult(total=len(sweep.runs))
    pending: list[Run] = []
    for run in sweep.runs:
        workdir = _workdir(root, run)
        if workdir_lib.is_complete(workdir):
            result.skipped.append(run.name)
            differing = stale_keys(workdir, sweep.resolved(run, global_overrides))
            if differing:
                result.stale.append(run.name)
                log(
                    f"warning: {run.name} is complete but was trained with another config "
                    f"({'; '.join(differing[:3])}{'; ...' if len(differing) > 3 else ''}); not rerun"
                )
        else:
            pending.append(run)
    log(
        f"sweep {sweep.name}: {len(sweep.runs)} runs, {len(result.skipped)} already complete (skipped), "
        f"{len(pending)} to run, {parallel} at a time; logs in {os.path.dirname(os.path.dirname(log_file_path(root, sweep, sweep.runs[0])))}/<run>/{LOG_FILE}"
    )

    stop: dict[str, int | None] = {"signal": None}
    handlers: dict[int, Any] = {}
    running: list[_Running] = []
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum, _frame):
            if stop["signal"] is not None and signum == signal.SIGINT:
                # A second Ctrl-C: do not wait for checkpoints.
                for item in running:
                    _signal_group(item.process, signal.SIGKILL)
            stop["signal"] = signum

        for signum in (signal.SIGINT, signal.SIGTERM):
            handlers[signum] = signal.signal(signum, on_signal)

    durations: list[float] = []
    finished = len(result.skipped)
    started = len(result.skipped)
    shown = progress.bar(result.total, f"sweep {sweep.name}", unit="run", initial=finished, enabled=console)

    def eta(starting: int = 0) -> str:
        """Time left: the mean duration of the finished runs times the runs not finished (those
        pending, running and `starting`), `parallel` at a time."""
        if not durations:
            return ""
        left = len(pending) + len(running) + starting
        return f", ETA {_duration(sum(durations) / len(durations) * left / parallel)}" if left else ""

    try:
        while (pending and stop["signal"] is None) or running:
            while pending and len(running) < parallel and stop["signal"] is None:
                run = pending.pop(0)
                started += 1
                elapsed = time.time() - start
                timing = f" (elapsed {_duration(elapsed)}{eta(starting=1)})" if elapsed >= 1 else ""
                counter = f"[{started}/{result.total}] "
                running.append(
                    _start(sweep, run, root, global_overrides, prefix, child_env, log, counter, timing)
                )
            time.sleep(poll_interval)
            if not shown.disable:  # what the running runs print last ("step 120/200 ... ETA 00:41")
                shown.set_description_str(
                    "; ".join(f"{r.run.name}: {_progress_line(r.log_path)}" for r in running) or sweep.name
                )
            if stop["signal"] is not None:
                _stop_all(running, stop_timeout, log)
            for item in [r for r in running if r.process.poll() is not None]:
                running.remove(item)
                item.log_file.close()
                seconds = time.time() - item.started
                workdir = _workdir(root, item.run)
                rc = item.process.returncode
                finished += 1
                if rc == 0 and workdir_lib.is_complete(workdir):
                    result.done.append(item.run.name)
                    shown.update(1)
                    durations.append(seconds)
                    summary = workdir_lib.read_summary(workdir) or {}
                    top1 = summary.get("eval_ema/top1", summary.get("eval/top1"))
                    top1_text = f", eval top-1 {top1:.4f}" if isinstance(top1, (int, float)) else ""
                    log(
                        f"[{finished}/{result.total}] done {item.run.name} in {_duration(seconds)}{top1_text}; "
                        f"elapsed {_duration(time.time() - start)}"
                        + (eta() if stop["signal"] is None else "")
                    )
                elif stop["signal"] is not None:
                    finished -= 1
                    result.interrupted.append(item.run.name)
                    log(f"stopped {item.run.name} after {_duration(seconds)} (exit {rc}); a rerun resumes it")
                else:
                    if rc == 0:
                        rc = -1  # exited 0 without a complete summary: count it as a failure
                    result.failed.append((item.run.name, rc, item.log_path))
                    shown.update(1)
                    log(
                        f"[{finished}/{result.total}] FAILED {item.run.name} (exit {rc}) after "
                        f"{_duration(seconds)}; log: {item.log_path}"
                    )
    finally:
        shown.close()
        for item in running:  # only on an unexpected error in this loop
            _signal_group(item.process, signal.SIGTERM)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    result.not_started = [run.name for run in pending]
    result.signal = stop["signal"]
    result.seconds = time.time() - start
    log(format_report(sweep, root, result))
    return result


def _workdir(root: str, run: Run) -> str:
    return str(workdir_lib.path(root, run.name))


def log_file_path(root: str, sweep: Sweep, run: Run) -> str:
    """ROOT/<run>/train.log; under a gs:// root (objects cannot be appended to) the log stays on
    this machine, in ~/.cache/mnv2_jax/logs/<sweep>/<run>/train.log."""
    if not workdir_lib.is_local(root):
        return os.path.join(os.path.expanduser("~/.cache/mnv2_jax/logs"), sweep.name, run.name, LOG_FILE)
    return os.path.join(root, run.name, LOG_FILE)


def _start(
    sweep: Sweep,
    run: Run,
    root: str,
    global_overrides: dict[str, Any],
    prefix: list[str],
    env: dict[str, str],
    log: Callable[[str], None],
    counter: str = "",
    note: str = "",
) -> _Running:
    workdir = _workdir(root, run)
    resuming = any(
        workdir_lib.path(workdir, f).exists() for f in (workdir_lib.CONFIG, workdir_lib.CHECKPOINTS)
    )
    workdir_lib.path(workdir).mkdir(parents=True, exist_ok=True)
    workdir_lib.write_sweep_record(workdir, sweep_record(sweep, run, global_overrides))
    argv = [*prefix, "train", *train_args(sweep, run, workdir, global_overrides)]
    log_path = log_file_path(root, sweep, run)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    log_file = open(log_path, "a")
    log_file.write(f"=== mnv2 sweep {sweep.name}: {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
    log_file.flush()
    # A session of its own: Ctrl-C reaches the runner only, which then SIGTERMs the run so
    # that it checkpoints instead of dying mid-step.
    process = subprocess.Popen(
        argv,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    log(f"{counter}{'resume' if resuming else 'start'} {run.name}{note}")
    return _Running(run, process, log_path, time.time(), log_file)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_all(running: list[_Running], timeout: float, log: Callable[[str], None]) -> None:
    """SIGTERM every running run (the train loop checkpoints and exits), then wait for them."""
    if not running:
        return
    log(f"stopping {len(running)} running run(s): SIGTERM, waiting for their checkpoints")
    for item in running:
        _signal_group(item.process, signal.SIGTERM)
    deadline = time.time() + timeout
    for item in running:
        try:
            item.process.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            _signal_group(item.process, signal.SIGKILL)
            item.process.wait()


def format_report(sweep: Sweep, root: str, result: SweepResult) -> str:
    lines = [
        f"sweep {sweep.name}: {len(result.done)} done, {len(result.skipped)} skipped (complete), "
        f"{len(result.failed)} failed"
        + (
            f", {len(result.interrupted)} interrupted, {len(result.not_started)} not started"
            if result.signal
            else ""
        )
        + f" of {result.total}, in {_duration(result.seconds)}; workdirs in {root}"
    ]
    if result.stale:
        lines.append(
            f"stale (complete, but trained with another config; delete them or use a new --workdir to "
            f"retrain): {', '.join(result.stale)}"
        )
    if result.failed:
        lines.append("failed runs:")
        for name, rc, path in result.failed:
            last = _last_line(path)
            lines.append(f"  {name}  exit {rc}  log: {path}" + (f"\n      {last}" if last else ""))
    if result.signal is not None:
        lines.append("stopped by a signal; rerun the same command to resume")
    elif result.failed:
        lines.append("rerun the same command to retry the failed runs (completed runs are skipped)")
    return "\n".join(lines)
