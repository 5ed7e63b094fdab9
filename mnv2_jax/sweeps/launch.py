"""Running a sweep elsewhere: Cloud TPU through SkyPilot, plain command lines, W&B sweeps and agents.

Cloud TPU (`mnv2 sweep launch FILE --tpu v4-32 --workdir gs://B/runs --data-dir gs://B/tfds
[--use-spot] [--zone Z] [--dry-run]`): one SkyPilot managed job per run (`sky jobs launch`), so
SkyPilot queues the runs, provisions the slice, and after a spot preemption or a failed host
brings up another slice and reruns the command, which resumes from the run's gs:// checkpoint.
Every run gets a task YAML under `--tasks-dir` (default `sky_tasks/<sweep>`):

* `workdir`: the launched commit, exported with `git archive` (SkyPilot uploads it to every
  host). The launcher refuses, before it writes or submits anything, when the workers would not
  run what the user sees: uncommitted changes in tracked files, a CONFIG file outside the
  checkout or not committed, no git checkout at all. The commit goes to the workers as
  MNV2_GIT_COMMIT, so each run's config.json records it.
* `setup`: a Python 3.11 environment (uv) with `jax[tpu]` and that code installed.
* `run`: `python -m mnv2_jax train --config CONFIG --workdir ROOT/<run> ...`, on every host of
  the slice (`MNV2_DISTRIBUTED=1`: `jax.distributed.initialize()` finds the other hosts).
* `envs`: TFDS_DATA_DIR (`--data-dir`), a compilation cache shared by the sweep's runs
  (ROOT/.jax_cache); WANDB_API_KEY goes as a SkyPilot secret when it is set here.

Before submitting, the launcher writes each run's `sweep.json` into ROOT/<run> (so a workdir
the launcher cannot write is refused before any job exists) and checks every YAML with
SkyPilot's own loader. `--dry-run` writes the YAMLs and the code, prints the commands, and
submits nothing. Follow the jobs with `sky jobs queue` and `sky jobs logs ID`.

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
import io
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Sequence
from typing import Any

from mnv2_jax import workdir as workdir_lib
from mnv2_jax.sweeps import sweep_file as sweeps
from mnv2_jax.sweeps.sweep_file import Run, Sweep

PAYLOAD_BYTES = 16384  # broadcast size of one agent job (JSON)
DEFAULT_METRIC = "eval_ema/top1"
PYTHON = "3.11"  # the workers' Python (TPU VM images bring an older one)
# TPU VM software versions per TPU generation (Cloud TPU documentation).
RUNTIME_VERSIONS = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}
SECRETS = ("WANDB_API_KEY",)  # passed to the workers when set here, never written to a YAML


class LaunchError(ValueError):
    """The launch cannot ship what the user would expect; nothing was written or submitted."""


# ---------------------------------------------------------------------------------------------
# The code the workers run: the commit the user launches from


def _git(*args: str, cwd: str | None = None) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_checkout() -> str | None:
    """The git checkout this package is imported from (an editable install), or None."""
    here = os.path.dirname(os.path.abspath(__file__))
    return _git("rev-parse", "--show-toplevel", cwd=here)


def launch_commit(repo: str | None, config_file: str) -> str:
    """The commit of `repo` to ship; LaunchError when the workers would run anything else.

    `config_file` (the sweep's CONFIG, absolute) must be a committed file of the checkout: it
    travels with the code, not with the command line.
    """
    if repo is None or _git("rev-parse", "--is-inside-work-tree", cwd=repo) != "true":
        raise LaunchError(
            "mnv2 sweep launch ships the code of a git checkout, and this package is not imported "
            "from one: clone the repository, `pip install -e .` there, and launch from it"
        )
    commit = _git("rev-parse", "HEAD", cwd=repo)
    if commit is None:
        raise LaunchError(f"{repo}: no commit yet; commit the code to launch")
    changed = _git("diff", "--name-only", "HEAD", cwd=repo)  # staged or not
    if changed:
        files = ", ".join(changed.splitlines()[:5]) + (", ..." if len(changed.splitlines()) > 5 else "")
        raise LaunchError(
            f"{repo} has uncommitted changes ({files}); the workers run commit {commit[:12]} "
            "without them: commit (or stash) them, then launch again"
        )
    relative = os.path.relpath(os.path.realpath(config_file), os.path.realpath(repo))
    if relative.startswith(os.pardir) or _git("ls-files", "--error-unmatch", relative, cwd=repo) is None:
        raise LaunchError(
            f"CONFIG {config_file} is not a committed file of {repo}: the workers would not have it; "
            "add and commit it (configs/ is the place), then launch again"
        )
    return commit


def export_commit(repo: str, commit: str, dest: str) -> str:
    """The files of `commit` (`git archive`) in `dest/code-<commit>`: what SkyPilot uploads."""
    code = os.path.join(dest, f"code-{commit[:12]}")
    if not os.path.isdir(code):
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit], cwd=repo, capture_output=True, check=True
        ).stdout
        tmp = code + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp, code)
    return code


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


# ---------------------------------------------------------------------------------------------
# SkyPilot tasks


def tpu_accelerator(tpu: str) -> tuple[str, str]:
    """`--tpu v4-32` as SkyPilot's accelerator name and the TPU VM software version."""
    name = tpu.strip().lower().removeprefix("tpu-")
    match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name)
    if not match or match.group(1) not in RUNTIME_VERSIONS:
        raise LaunchError(
            f"--tpu {tpu!r}: expected a TPU type such as v4-32, v5litepod-16, v5p-8 or v6e-8 "
            f"(generations: {', '.join(RUNTIME_VERSIONS)})"
        )
    return f"tpu-{name}", RUNTIME_VERSIONS[match.group(1)]


def job_name(sweep: Sweep, run: Run) -> str:
    """A SkyPilot job name: lower-case letters, digits and '-'."""
    text = re.sub(r"[^a-z0-9]+", "-", f"{sweep.name}-{run.name}".lower()).strip("-")
    return text[:60].rstrip("-")


def setup_script() -> str:
    """Every host: Python 3.11 (uv), jax[tpu] and the launched code."""
    return "\n".join(
        [
            "set -e",
            'export PATH="$HOME/.local/bin:$PATH"',
            "command -v uv >/dev/null || python3 -m pip install --user --quiet uv",
            f"[ -x ~/mnv2-venv/bin/python ] || uv venv --python {PYTHON} ~/mnv2-venv",
            "VIRTUAL_ENV=~/mnv2-venv uv pip install --quiet --upgrade --reinstall-package mnv2_jax 'jax[tpu]' .",
        ]
    )


def task_config(
    sweep: Sweep,
    run: Run,
    *,
    root: str,
    tpu: str,
    code_dir: str,
    commit: str,
    config: str | None = None,
    data_dir: str | None = None,
    use_spot: bool = False,
    zone: str | None = None,
    region: str | None = None,
    global_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The SkyPilot task (YAML as a dict) that trains one run on one TPU slice.

    `config` is CONFIG relative to the checkout's root (the workers' working directory).
    """
    accelerator, runtime = tpu_accelerator(tpu)
    if zone:
        region = region or zone.rsplit("-", 1)[0]
    resources: dict[str, Any] = {
        "infra": "/".join(["gcp", *([region] if region else []), *([zone] if zone else [])]),
        "accelerators": accelerator,
        "accelerator_args": {"runtime_version": runtime},
        "use_spot": use_spot,
    }
    envs = {
        "MNV2_GIT_COMMIT": commit,
        "MNV2_DISTRIBUTED": "1",
        "JAX_COMPILATION_CACHE_DIR": f"{root.rstrip('/')}/.jax_cache",
    }
    if data_dir:
        envs["TFDS_DATA_DIR"] = data_dir
    argv = train_command(
        sweep, run, root, global_overrides, prefix=("python", "-m", "mnv2_jax"), config=config
    )
    return {
        "name": job_name(sweep, run),
        "workdir": code_dir,
        "resources": resources,
        "num_nodes": 1,  # one TPU slice; SkyPilot runs `run` on each of its hosts
        "envs": envs,
        "setup": setup_script() + "\n",
        "run": f"source ~/mnv2-venv/bin/activate\n{shlex.join(argv)}\n",
    }


def task_yaml(task: dict[str, Any]) -> str:
    """The task as YAML, scripts as literal blocks (as one writes them by hand)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def string(dumper: yaml.SafeDumper, value: str):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, string)
    return yaml.dump(task, Dumper=Dumper, sort_keys=False, width=1000)


def sky_command(name: str, yaml_path: str, secrets: Sequence[str] = ()) -> list[str]:
    secret_args = [a for key in secrets for a in ("--secret", key)]
    return ["sky", "jobs", "launch", "--yes", "--detach-run", "--name", name, *secret_args, yaml_path]


def check_tasks(paths: Sequence[str]) -> None:
    """Load every task YAML with SkyPilot (its schema and resource checks); needs no cloud access."""
    import sky

    for path in paths:
        try:
            sky.Task.from_yaml(path)
        except Exception as e:  # noqa: BLE001 - SkyPilot's own message says what is wrong
            raise LaunchError(f"{path}: SkyPilot rejects this task: {e}") from None


def write_manifests(sweep: Sweep, root: str, global_overrides: dict[str, Any]) -> None:
    """The sweep manifest in ROOT and ROOT/<run>/sweep.json for every run (analysis reads them)."""
    path = workdir_lib.path(root, sweep.name + workdir_lib.MANIFEST_SUFFIX)
    try:
        workdir_lib.write_sweep_manifest(root, sweeps.manifest(sweep))
        for run in sweep.runs:
            path = workdir_lib.path(root, run.name, workdir_lib.SWEEP)
            path.parent.mkdir(parents=True, exist_ok=True)
            workdir_lib.write_sweep_record(path.parent, sweeps.sweep_record(sweep, run, global_overrides))
    except Exception as e:  # noqa: BLE001 - any storage error: name the path, submit nothing
        raise LaunchError(f"--workdir {root}: cannot write {path} ({type(e).__name__}: {e})") from None


def main(
    sweep: Sweep, args: argparse.Namespace, global_overrides: dict[str, Any], repo: str | None = None
) -> int:
    """`mnv2 sweep launch`: print commands, or write SkyPilot tasks and submit them."""
    sweeps.validate_global_overrides(sweep, global_overrides)
    if args.print_commands:
        for line in print_commands(sweep, args.workdir or f"runs/{sweep.name}", global_overrides):
            print(line)
        return 0
    if not args.tpu or not args.workdir:
        raise LaunchError(
            "--tpu TYPE (e.g. v4-32) and --workdir gs://BUCKET/PATH are required (or --print-commands)"
        )
    tpu_accelerator(args.tpu)
    if not args.workdir.startswith("gs://"):
        raise LaunchError(
            f"--workdir {args.workdir!r}: the hosts of a TPU slice and the runs after a preemption "
            "must all see the workdir: give a gs://BUCKET/PATH"
        )
    repo = repo or package_checkout()
    config_file, sep, config_arg = sweep.config_path.partition(":")
    commit = launch_commit(repo, config_file)
    config = os.path.relpath(os.path.realpath(config_file), os.path.realpath(repo)) + sep + config_arg
    tasks_dir = os.path.abspath(args.tasks_dir or os.path.join("sky_tasks", sweep.name))
    os.makedirs(tasks_dir, exist_ok=True)
    code_dir = export_commit(repo, commit, tasks_dir)
    secrets = [key for key in SECRETS if os.environ.get(key)]
    commands = []
    for run in sweep.runs:
        task = task_config(
            sweep,
            run,
            root=args.workdir,
            tpu=args.tpu,
            code_dir=code_dir,
            commit=commit,
            config=config,
            data_dir=args.data_dir,
            use_spot=args.use_spot,
            zone=args.zone,
            region=args.region,
            global_overrides=global_overrides,
        )
        path = os.path.join(tasks_dir, f"{run.name}.yaml")
        with open(path, "w") as f:
            f.write(f"# mnv2 sweep {sweep.name}, run {run.name}, commit {commit}\n")
            f.write(task_yaml(task))
        commands.append(sky_command(task["name"], path, secrets))
    try:
        check_tasks([c[-1] for c in commands])
    except ImportError:
        if not args.dry_run:
            raise LaunchError("SkyPilot is not installed: pip install 'mnv2_jax[launch]'") from None
        print("# SkyPilot is not installed here: the task YAMLs were not checked", file=sys.stderr)
    print(f"# sweep {sweep.name}: {len(commands)} SkyPilot tasks in {tasks_dir} (commit {commit[:12]})")
    if args.dry_run:
        for argv in commands:
            print(shlex.join(argv))
        return 0
    if shutil.which("sky") is None:
        raise LaunchError("`sky` not found on PATH: pip install 'mnv2_jax[launch]', then `sky check gcp`")
    write_manifests(sweep, args.workdir, global_overrides)
    failed = 0
    for argv in commands:
        print(shlex.join(argv), flush=True)
        rc = subprocess.run(argv).returncode
        if rc != 0:
            failed += 1
            print(f"mnv2 sweep launch: {argv[-1]} was not submitted (exit {rc})", file=sys.stderr)
    print(
        f"submitted {len(commands) - failed} of {len(commands)} runs of sweep {sweep.name}; "
        "follow them with: sky jobs queue; sky jobs logs JOB_ID",
        flush=True,
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
    workdir = str(workdir_lib.path(workdir_root, name))
    wandb_overrides: dict[str, Any] = {"wandb.name": name, "wandb.tags": tuple(tags)}
    if group:
        wandb_overrides["wandb.group"] = group
    if project:
        wandb_overrides["wandb.project"] = project
    if entity:
        wandb_overrides["wandb.entity"] = entity
    config = config_lib.apply_overrides(config, wandb_overrides)
    if is_main:
        workdir_lib.path(workdir).mkdir(parents=True, exist_ok=True)
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
