"""Running a sweep elsewhere: Cloud TPU slices, plain command lines, W&B sweeps and agents.

Cloud TPU (`mnv2 sweep launch FILE --tpu A[,B...] --zone Z [--dry-run]`)
  1. setup, once per TPU VM, on every worker (`gcloud compute tpus tpu-vm ssh ... --worker=all`):
     `pip install 'jax[tpu]'` and this repository at the exact local git commit
     (`git+<origin url>@<commit>`; push first), and `~/mnv2_sweeps/env.sh` exporting
     TFDS_DATA_DIR when `--data-dir` is given;
  2. one queue per slice: the runs are dealt round-robin over the slices; each slice gets a
     single shell script, written on every worker through a heredoc and started detached
     (`setsid nohup bash queue.sh >> queue.log 2>&1 &`), that trains the slice's runs one
     after the other in the same order on every worker -- the workers of a multi-host slice
     step through the same runs together (each run is one `jax.distributed` job), and the
     queue keeps going after the laptop disconnects. The config file travels inside the
     queue (configs are not part of the installed package), so the workers train exactly
     the config that `mnv2 sweep list` validated here. Launching again restarts nothing that
     is still running (a pid file guards each queue); after a preemption it resumes: complete
     runs return at once, interrupted ones resume from their checkpoints.
  Every command is built as an argument list and printed with `shlex.join`, so names,
  paths and values with spaces or quotes survive the local shell, the remote shell and the
  queue script unchanged.

Anywhere else (`--print-commands`): one `mnv2 train ...` line per run, e.g. for a Slurm array
(`sed -n "${SLURM_ARRAY_TASK_ID}p" commands.txt | bash`).

W&B sweeps (`mnv2 sweep export-wandb FILE`): a grid-search sweep YAML. A wandb agent passes
only `--KEY=VALUE` for the sweep's parameters, never a workdir, so the YAML's command is
`mnv2 sweep train --config CONFIG --workdir-root ROOT ... ${args}`, which derives the run's
name (the same name `mnv2 sweep run` gives it) from the overrides and trains in ROOT/<name>.
Parameters are the swept config keys as `config.KEY` (the agent then passes
`--config.width=0.5`) when the sweep is a full Cartesian grid; a sweep that is not (the
paper's width x resolution grid plus 1.3 and 1.4 at 224) becomes one parameter `overrides`
whose values are the runs' overrides as JSON. Either way the grid is exactly the sweep's.

Multi-host agent (`mnv2 sweep agent SWEEP_ID --workdir ROOT`, the same command on every
worker): process 0 takes the next run from the W&B server (`wandb.agent(..., count=1)`)
and broadcasts it (JSON in a fixed-size uint8 array, `broadcast_one_to_all`) so that every
host trains the same run in ROOT/<run name>, logging to the run the server created.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mnv2_jax import workdir as workdir_lib
from mnv2_jax.sweeps import sweep_file as sweeps
from mnv2_jax.sweeps.sweep_file import Run, Sweep

REMOTE_DIR = "mnv2_sweeps"  # under the workers' $HOME
PAYLOAD_BYTES = 16384  # broadcast size of one agent job (JSON)
DEFAULT_METRIC = "eval_ema/top1"


# ---------------------------------------------------------------------------------------------
# Where the package comes from


def _git(*args: str, cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def pip_url(remote: str) -> str:
    """A git remote as pip's VCS URL: `git@host:owner/repo.git` becomes `ssh://git@host/owner/repo.git`."""
    if "://" not in remote and ":" in remote and "@" in remote.split(":", 1)[0]:
        user_host, path = remote.split(":", 1)
        remote = f"ssh://{user_host}/{path}"
    return remote


def package_requirement(repo_dir: str, warn: Callable[[str], None]) -> str | None:
    """`git+<origin>@<commit>` for the local HEAD, or None when there is no remote."""
    commit = _git("rev-parse", "HEAD", cwd=repo_dir)
    if commit is None:
        return None
    remote = _git("remote", "get-url", "origin", cwd=repo_dir)
    if _git("status", "--porcelain", "--untracked-files=no", cwd=repo_dir):
        warn(
            f"the working tree has uncommitted changes: the workers install commit {commit[:12]} without them"
        )
    if remote is None:
        return None
    if not _git("branch", "-r", "--contains", commit, cwd=repo_dir):
        warn(f"commit {commit[:12]} is on no remote branch that git knows of: push it before launching")
    return f"git+{pip_url(remote)}@{commit}"


# ---------------------------------------------------------------------------------------------
# Command lines


def train_command(
    sweep: Sweep,
    run: Run,
    root: str,
    global_overrides: dict[str, Any] | None = None,
    prefix: Sequence[str] = ("mnv2",),
    config: str | None = None,
) -> list[str]:
    """The argument list that trains one run in `root/<name>` (config as written in the file)."""
    workdir = f"{root.rstrip('/')}/{run.name}"
    return [
        *prefix,
        "train",
        *sweeps.train_args(sweep, run, workdir, global_overrides, config=config or sweep.config),
    ]


def print_commands(sweep: Sweep, root: str, global_overrides: dict[str, Any] | None = None) -> list[str]:
    """One shell line per run, in run order."""
    return [shlex.join(train_command(sweep, run, root, global_overrides)) for run in sweep.runs]


def ssh_command(tpu: str, zone: str, project: str | None, remote_command: str) -> list[str]:
    argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, "--zone", zone]
    if project:
        argv += ["--project", project]
    return [*argv, "--worker=all", "--command", remote_command]


def setup_script(requirement: str, data_dir: str | None) -> str:
    """Install jax[tpu] and this exact commit; remember TFDS_DATA_DIR for the queues."""
    q = shlex.quote
    lines = [
        "set -e",
        f"mkdir -p ~/{REMOTE_DIR}",
        f"python3 -m pip install --quiet --upgrade {q('jax[tpu]')} {q(requirement)}",
        # Same version number, another commit: pip would keep the old one without this.
        f"python3 -m pip install --quiet --no-deps --force-reinstall {q(requirement)}",
    ]
    env_line = f"export TFDS_DATA_DIR={q(data_dir)}" if data_dir else "# no --data-dir: TFDS default"
    lines.append(f"echo {q(env_line)} > ~/{REMOTE_DIR}/env.sh")
    lines.append('echo "$(hostname): mnv2_jax installed"')
    return "\n".join(lines)


def _heredoc_delimiter(tag: str, *texts: str) -> str:
    delimiter = f"MNV2_{tag}_EOF"
    while any(delimiter in text for text in texts):
        delimiter += "_"
    return delimiter


def queue_script(
    sweep: Sweep,
    runs: Sequence[Run],
    root: str,
    config: str,
    global_overrides: dict[str, Any] | None,
    label: str,
) -> str:
    """A bash script that trains `runs` one after the other (same order on every worker)."""
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        f"# mnv2 sweep {sweep.name}, {label}: {len(runs)} runs, one after the other, on every worker.",
        "# Written by `mnv2 sweep launch`; launching again resumes (complete runs return at once).",
        'cd "$(dirname "$0")"',
        "echo $$ > queue.pid",
        "trap 'rm -f queue.pid' EXIT",
        f'[ -f "$HOME/{REMOTE_DIR}/env.sh" ] && . "$HOME/{REMOTE_DIR}/env.sh"',
        'export JAX_COMPILATION_CACHE_DIR="$PWD/.jax_cache"',
        'export PATH="$HOME/.local/bin:$PATH"',
        "mkdir -p logs",
        "failed=0",
        "run() {",
        "  local name=$1; shift",
        '  echo "$(date -u +%FT%TZ) start $name"',
        '  if "$@" >> "logs/$name.log" 2>&1; then',
        '    echo "$(date -u +%FT%TZ) done $name"',
        "  else",
        '    echo "$(date -u +%FT%TZ) FAILED $name (exit $?): $PWD/logs/$name.log"',
        "    failed=$((failed + 1))",
        "  fi",
        "}",
    ]
    for run in runs:
        argv = train_command(
            sweep, run, root, global_overrides, prefix=("python3", "-m", "mnv2_jax"), config=config
        )
        lines.append(f"run {q(run.name)} {shlex.join(argv)}")
    lines.append(f'echo "$(date -u +%FT%TZ) queue finished: {len(runs)} runs, $failed failed"')
    return "\n".join(lines) + "\n"


def start_script(sweep: Sweep, queue: str, config_file: str, config_text: str) -> str:
    """Write the config file and the queue on a worker and start the queue detached."""
    q = shlex.quote
    directory = f"~/{REMOTE_DIR}/{q(sweep.name)}"
    config_delim = _heredoc_delimiter("CONFIG", config_text)
    queue_delim = _heredoc_delimiter("QUEUE", queue)
    return "\n".join(
        [
            "set -e",
            f"mkdir -p {directory}/configs {directory}/logs",
            f"cd {directory}",
            'if [ -f queue.pid ] && kill -0 "$(cat queue.pid)" 2>/dev/null; then',
            '  echo "$(hostname): a queue is already running (pid $(cat queue.pid)); not starting another"',
            "  exit 0",
            "fi",
            f"cat > {q('configs/' + config_file)} <<'{config_delim}'",
            config_text.rstrip("\n"),
            config_delim,
            f"cat > queue.sh <<'{queue_delim}'",
            queue.rstrip("\n"),
            queue_delim,
            "setsid nohup bash queue.sh >> queue.log 2>&1 < /dev/null &",
            f'echo "$(hostname): queue started (pid $!); log: ~/{REMOTE_DIR}/{sweep.name}/queue.log"',
        ]
    )


def tpu_commands(
    sweep: Sweep,
    tpus: Sequence[str],
    zone: str,
    project: str | None,
    requirement: str,
    workdir: str | None = None,
    data_dir: str | None = None,
    global_overrides: dict[str, Any] | None = None,
    setup: bool = True,
) -> list[tuple[str, list[str]]]:
    """`(what, argv)` for the setup of every TPU, then the start of every slice's queue."""
    file, sep, arg = sweep.config.partition(":")
    config_file = os.path.basename(file)
    with open(sweep.config_path.partition(":")[0]) as f:
        config_text = f.read()
    config = f"configs/{config_file}{sep}{arg}"
    root = workdir or "runs"  # relative: ~/mnv2_sweeps/<sweep>/runs on each worker
    commands = []
    if setup:
        for tpu in tpus:
            commands.append(
                (
                    f"setup of {tpu} (every worker)",
                    ssh_command(tpu, zone, project, setup_script(requirement, data_dir)),
                )
            )
    for i, tpu in enumerate(tpus):
        runs = sweep.runs[i :: len(tpus)]
        if not runs:
            continue
        label = f"slice {i + 1}/{len(tpus)} ({tpu})"
        queue = queue_script(sweep, runs, root, config, global_overrides, label)
        commands.append(
            (
                f"queue of {label}: {len(runs)} runs",
                ssh_command(tpu, zone, project, start_script(sweep, queue, config_file, config_text)),
            )
        )
    return commands


def main(sweep: Sweep, args: argparse.Namespace, global_overrides: dict[str, Any]) -> int:
    """`mnv2 sweep launch`."""
    sweeps.validate_global_overrides(sweep, global_overrides)

    def warn(message: str) -> None:
        print(f"mnv2 sweep launch: warning: {message}", file=sys.stderr)

    if args.print_commands:
        for line in print_commands(sweep, args.workdir or f"runs/{sweep.name}", global_overrides):
            print(line)
        return 0
    if not args.tpu or not args.zone:
        raise ValueError("--tpu NAME[,NAME...] and --zone ZONE are required (or --print-commands)")
    tpus = [t.strip() for t in args.tpu.split(",") if t.strip()]
    requirement = args.package
    if requirement is None:
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        requirement = package_requirement(repo, warn)
        if requirement is None:
            message = (
                "no git remote 'origin' (or no git checkout): the workers install the package with "
                "pip from a git URL; push this repository somewhere they can reach, add it as 'origin', "
                "or pass --package REQUIREMENT"
            )
            if not args.dry_run:
                raise ValueError(message)
            warn(message)
            requirement = f"git+<REMOTE-URL>@{_git('rev-parse', 'HEAD', cwd=repo) or '<COMMIT>'}"
    if args.workdir is None:
        warn(
            f"no --workdir: runs go to ~/{REMOTE_DIR}/{sweep.name}/runs on each worker's local disk; "
            "a multi-host slice needs a shared gs:// --workdir"
        )
    commands = tpu_commands(
        sweep,
        tpus,
        args.zone,
        args.project,
        requirement,
        args.workdir,
        args.data_dir,
        global_overrides,
        setup=not args.skip_setup,
    )
    if args.dry_run:
        for what, argv in commands:
            print(f"# {what}")
            print(shlex.join(argv))
        return 0
    if shutil.which("gcloud") is None:
        raise ValueError("gcloud not found on PATH (install the Google Cloud SDK, or use --dry-run)")
    failed = 0
    for what, argv in commands:
        print(f"# {what}\n{shlex.join(argv)}", flush=True)
        rc = subprocess.run(argv).returncode
        if rc != 0:
            failed += 1
            print(f"mnv2 sweep launch: {what} failed (exit {rc})", file=sys.stderr)
    print(
        f"launched sweep {sweep.name}: {len(sweep.runs)} runs over {len(tpus)} slice(s); "
        f"follow with: gcloud compute tpus tpu-vm ssh {tpus[0]} --zone {args.zone} --worker=0 "
        f"--command 'tail -f ~/{REMOTE_DIR}/{sweep.name}/queue.log'"
    )
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# W&B sweeps


def _yaml_value(value: Any) -> Any:
    # Strings the command line would misread ('none' -> None) go quoted, as `--config.k='none'`.
    if isinstance(value, str):
        return sweeps.format_value(value)
    return [_yaml_value(v) for v in value] if isinstance(value, (list, tuple)) else value


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _key(overrides: dict[str, Any]) -> str:
    """Overrides as canonical JSON (typed values: what the run's config gets)."""
    return json.dumps({k: _plain(v) for k, v in overrides.items()}, sort_keys=True)


def grid_axes(sweep: Sweep) -> dict[str, list[Any]] | None:
    """Per-key values if the runs are exactly a Cartesian product, else None."""
    keys = list(sweep.runs[0].overrides)
    if any(set(run.overrides) != set(keys) for run in sweep.runs):
        return None
    axes: dict[str, list[Any]] = {}
    for key in keys:
        values: list[Any] = []
        for run in sweep.runs:
            value = _plain(run.overrides[key])
            if value not in values:
                values.append(value)
        axes[key] = values
    product = {_key(dict(zip(keys, combo))) for combo in itertools.product(*axes.values())}
    runs = {_key(run.overrides) for run in sweep.runs}
    return axes if product == runs and len(product) == len(sweep.runs) else None


def wandb_sweep_config(sweep: Sweep, root: str) -> dict[str, Any]:
    """The sweep as a W&B grid sweep (a dict for `wandb.sweep` or YAML)."""
    axes = grid_axes(sweep)
    if axes is not None:
        parameters = {
            f"config.{k}": (
                {"values": [_yaml_value(x) for x in v]} if len(v) > 1 else {"value": _yaml_value(v[0])}
            )
            for k, v in axes.items()
        }
    else:
        parameters = {"overrides": {"values": [_key(run.overrides) for run in sweep.runs]}}
    command = [
        "${env}", "mnv2", "sweep", "train",
        "--config", sweep.config,
        "--workdir-root", root,
        "--group", sweep.name,
        "--tags", ",".join(sweep.swept_keys),
        "--sweep-file", sweep.path,
        *(["--fixed", _key(sweep.fixed)] if sweep.fixed else []),
        "${args}",
    ]  # fmt: skip
    return {
        "name": sweep.name,
        "project": sweep.project,
        "description": f"mnv2_jax sweep {sweep.name}: {len(sweep.runs)} runs, {os.path.basename(sweep.path)}",
        "method": "grid",
        "metric": {"name": DEFAULT_METRIC, "goal": "maximize"},
        "parameters": parameters,
        "command": command,
    }


def wandb_yaml(sweep: Sweep, root: str) -> str:
    import yaml

    header = (
        f"# W&B grid sweep for {os.path.relpath(sweep.path)}: {len(sweep.runs)} runs.\n"
        f"#   wandb sweep THIS.yaml   then, in a checkout:   wandb agent ENTITY/{sweep.project}/SWEEP_ID\n"
        "#   multi-host TPU slice, on every worker: mnv2 sweep agent ENTITY/PROJECT/SWEEP_ID --workdir ROOT\n"
    )
    return header + yaml.safe_dump(wandb_sweep_config(sweep, root), sort_keys=False, width=1000)


def overrides_from_params(params: dict[str, Any]) -> dict[str, Any]:
    """A W&B run's parameters as config overrides: `config.KEY` entries and `overrides` JSON.

    String values come out as command-line text (what `config.apply_overrides` parses), as the
    agent would pass them. wandb may hand dotted parameter names back nested
    (`{"config": {"width": ...}}`); both work.
    """
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and "value" not in value:
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            flat[prefix[:-1]] = value["value"] if isinstance(value, dict) else value

    walk("", params)
    out: dict[str, Any] = {}
    if "overrides" in flat:
        raw = flat.pop("overrides")
        out.update(sweeps.literal_overrides(json.loads(raw) if isinstance(raw, str) else raw))
    for key, value in flat.items():
        if key.startswith("config."):
            out[key[len("config.") :]] = value
    return out


def wandb_grid(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run a W&B grid sweep config yields, as override dicts (what the agent passes)."""
    names, choices = [], []
    for name, spec in config["parameters"].items():
        names.append(name)
        choices.append(spec["values"] if "values" in spec else [spec["value"]])
    from mnv2_jax.config import parse_value

    def parsed(value: Any) -> Any:
        return parse_value(value) if isinstance(value, str) else value

    return [
        {k: parsed(v) for k, v in overrides_from_params(dict(zip(names, combo))).items()}
        for combo in itertools.product(*choices)
    ]


def parse_sweep_command(command: Sequence[str]) -> dict[str, str]:
    """`--config`, `--group`, `--tags` and `--workdir-root` from a sweep's command list."""
    out: dict[str, str] = {}
    for flag in ("--config", "--group", "--tags", "--workdir-root", "--project", "--fixed"):
        for i, item in enumerate(command):
            if item == flag and i + 1 < len(command):
                out[flag[2:].replace("-", "_")] = command[i + 1]
            elif item.startswith(flag + "="):
                out[flag[2:].replace("-", "_")] = item.split("=", 1)[1]
    return out


def train_one(
    config_spec: str,
    workdir_root: str,
    overrides: dict[str, Any],
    *,
    fixed: dict[str, Any] | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    project: str | None = None,
    entity: str | None = None,
    run_id: str | None = None,
    is_main: bool = True,
    train_fn: Callable[..., Any] | None = None,
    sweep_file: str | None = None,
) -> Any:
    """Train one run of a W&B sweep in `workdir_root/<run name>` (the name `mnv2 sweep run` gives it).

    `fixed` (the sweep file's OVERRIDES, typed values) is part of the baseline the name is read
    against; `overrides` are command-line text as the agent passes it.
    """
    from mnv2_jax import config as config_lib

    base = config_lib.load_config(config_spec)
    try:
        base = config_lib.apply_overrides(base, sweeps.literal_overrides(fixed or {}))
        config = config_lib.apply_overrides(base, overrides)
        config_lib.validate_config(config)
    except ValueError as e:
        # The run has no name before its config resolves: name it by its W&B id and parameters.
        what = f"sweep run {run_id}" if run_id else "sweep run"
        shown = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        raise ValueError(f"{what} ({shown}): {e}") from None
    name = sweeps.run_name(config_lib.flatten(base), config_lib.flatten(config), list(overrides))
    workdir = os.path.join(workdir_root, name)
    wandb_overrides: dict[str, Any] = {"wandb.name": name, "wandb.tags": tuple(tags)}
    if group:
        wandb_overrides["wandb.group"] = group
    if project:
        wandb_overrides["wandb.project"] = project
    if entity:
        wandb_overrides["wandb.entity"] = entity
    config = config_lib.apply_overrides(config, wandb_overrides)
    if is_main:
        os.makedirs(workdir, exist_ok=True)
        workdir_lib.write_sweep_record(
            workdir,
            workdir_lib.sweep_record(
                sweep=group,
                run=name,
                sweep_file=sweep_file,
                config=config_spec,
                fixed=sweeps._jsonable(fixed or {}),
                overrides=sweeps._jsonable(overrides),
                global_overrides={},
                swept_keys=list(tags),
                project=project or config.wandb.project,
                wandb_run_id=run_id,
            ),
        )
        if sweep_file:
            manifests = workdir_lib.read_sweep_manifests(workdir_root)
            if not any(m.get("sweep") == group for m in manifests):
                sweep = sweeps.load_sweep(sweep_file)
                workdir_lib.write_sweep_manifest(workdir_root, sweeps.manifest(sweep))
        if run_id:
            # mnv2_jax.train.writer reuses the id in this file: metrics go to the run the sweep created.
            workdir_lib.wandb_run_id(workdir, run_id)
    print(f"sweep run {name}: {workdir}", flush=True)
    if train_fn is None:
        from mnv2_jax.train.loop import train_and_evaluate as train_fn
    return train_fn(config, workdir)


def train_one_from_cli(args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    """`mnv2 sweep train`: what the YAML's command runs under `wandb agent`."""
    if args.overrides:
        overrides = {**overrides_from_params({"overrides": args.overrides}), **overrides}
    return train_one(
        args.config,
        args.workdir_root,
        overrides,
        fixed=json.loads(args.fixed) if args.fixed else None,
        group=args.group,
        tags=[t for t in args.tags.split(",") if t],
        project=args.project or os.environ.get("WANDB_PROJECT"),
        entity=os.environ.get("WANDB_ENTITY"),
        run_id=os.environ.get("WANDB_RUN_ID"),
        sweep_file=args.sweep_file,
    )


# ---------------------------------------------------------------------------------------------
# The multi-host agent


def encode_payload(obj: Any, size: int = PAYLOAD_BYTES):
    """JSON in a fixed-size uint8 array (4-byte little-endian length, then the bytes)."""
    import numpy as np

    data = json.dumps(obj).encode()
    if len(data) + 4 > size:
        raise ValueError(f"agent job of {len(data)} bytes does not fit the {size}-byte broadcast buffer")
    out = np.zeros(size, np.uint8)
    out[:4] = np.frombuffer(len(data).to_bytes(4, "little"), np.uint8)
    out[4 : 4 + len(data)] = np.frombuffer(data, np.uint8)
    return out


def decode_payload(array) -> Any:
    import numpy as np

    array = np.asarray(array, np.uint8)
    n = int.from_bytes(array[:4].tobytes(), "little")
    return json.loads(array[4 : 4 + n].tobytes().decode())


def broadcast_job(job: Any, is_source: bool, size: int = PAYLOAD_BYTES) -> Any:
    """Process 0's `job` on every host (the others pass anything; their value is ignored)."""
    import numpy as np
    from jax.experimental import multihost_utils

    buffer = encode_payload(job, size) if is_source else np.zeros(size, np.uint8)
    return decode_payload(multihost_utils.broadcast_one_to_all(buffer, is_source=is_source))


def next_job(sweep_id: str, config: str | None = None) -> dict[str, Any] | None:
    """Process 0: the next run of the sweep from the W&B server, or None when there is none."""
    import wandb

    captured: dict[str, Any] = {}

    def capture() -> None:
        # Only take the parameters; training happens after, in this process, and resumes
        # this run by its id (metrics.MetricWriter reads it from the workdir).
        run = wandb.init()
        captured.update(
            params=dict(run.config),
            run_id=run.id,
            project=run.project,
            entity=run.entity,
            sweep_id=run.sweep_id,
        )

    wandb.agent(sweep_id, function=capture, count=1)
    if not captured:
        return None
    command: list[str] = []
    try:
        short_id = sweep_id.split("/")[-1]
        api_sweep = wandb.Api().sweep(f"{captured['entity']}/{captured['project']}/{short_id}")
        command = list(api_sweep.config.get("command") or [])
    except Exception as e:  # noqa: BLE001 - the command only supplies defaults
        print(f"could not read the sweep's command ({e}); pass --config", file=sys.stderr)
    found = parse_sweep_command(command)
    config = config or found.get("config")
    if not config:
        raise ValueError(f"sweep {sweep_id}: no --config in its command; pass --config configs/X.py")
    return {
        "config": config,
        "overrides": overrides_from_params(captured["params"]),
        "fixed": json.loads(found["fixed"]) if found.get("fixed") else {},
        "group": found.get("group"),
        "tags": [t for t in found.get("tags", "").split(",") if t],
        "project": captured["project"],
        "entity": captured["entity"],
        "run_id": captured["run_id"],
    }


def agent(
    sweep_id: str,
    workdir_root: str,
    count: int | None = None,
    config: str | None = None,
    *,
    next_job_fn: Callable[[str, str | None], dict | None] = next_job,
    broadcast: Callable[[Any, bool], Any] = broadcast_job,
    train_fn: Callable[..., Any] | None = None,
    process_index: int | None = None,
) -> int:
    """Run sweep jobs until the sweep (or `count`) is exhausted; the same call on every host."""
    if process_index is None:
        import jax

        from mnv2_jax.train.loop import maybe_initialize_distributed

        maybe_initialize_distributed()
        process_index = jax.process_index()
    is_main = process_index == 0
    done = failed = 0
    while count is None or done + failed < count:
        job: Any = None
        if is_main:
            try:
                job = next_job_fn(sweep_id, config) or {"done": True}
            except Exception as e:  # noqa: BLE001 - the other hosts must hear about it too
                job = {"error": f"{type(e).__name__}: {e}"}
        job = broadcast(job, is_main)
        if "error" in job:
            raise RuntimeError(f"sweep agent: process 0 could not get a run: {job['error']}")
        if job.get("done"):
            break
        try:
            train_one(
                job["config"],
                workdir_root,
                job["overrides"],
                fixed=job.get("fixed"),
                group=job.get("group"),
                tags=job.get("tags") or (),
                project=job.get("project"),
                entity=job.get("entity"),
                run_id=job.get("run_id"),
                is_main=is_main,
                train_fn=train_fn,
            )
            done += 1
        except Exception as e:  # noqa: BLE001 - one failing run does not end the agent
            failed += 1
            print(f"sweep agent: run failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    if is_main:
        print(f"sweep agent: {done} runs done, {failed} failed", flush=True)
    return 1 if failed else 0
