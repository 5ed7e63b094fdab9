"""Sweeps: the sweep files, run names, validation, the local runner, launch commands, wandb.

Most tests need no JAX: the runner's scheduling (parallel, skip, failure, SIGTERM and resume)
is exercised with a fake trainer script, and launch commands are checked by executing the
generated remote script with bash and a fake `python3`. One test runs the real smoke
config through `mnv2 sweep run` (3-40 steps per run) to check skip, resume and failure end
to end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import pytest

from mnv2_jax import config as config_lib
from mnv2_jax import workdir as workdir_lib
from mnv2_jax.sweeps import launch, local
from mnv2_jax.sweeps import sweep_file as sweeps

REPO = pathlib.Path(__file__).resolve().parent.parent
SWEEPS = REPO / "sweeps"
MNIST = str(REPO / "configs" / "mnist.py")
# The temporary sweeps below pin the base resolution, so run names don't follow the config's default.
MNIST32 = MNIST + ":resolution=32"


def write_sweep(
    tmp_path: pathlib.Path, body: str, name: str = "tmp", config: str = MNIST32, seeds: int = 1
) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(
        f"NAME = {name!r}\nCONFIG = {config!r}\nWANDB_PROJECT = 'test-project'\nSEEDS = {seeds}\n\n"
        + textwrap.dedent(body)
    )
    return str(path)


# ---------------------------------------------------------------------------------------------
# Sweep files


def test_width_resolution_is_the_published_grid():
    sweep = sweeps.load_sweep(str(SWEEPS / "width_resolution.py"))
    assert len(sweep.runs) == 22
    assert sweep.swept_keys == ("width", "resolution")
    points = {(r.overrides["width"], r.overrides["resolution"]) for r in sweep.runs}
    grid = {(w, r) for w in (0.35, 0.5, 0.75, 1.0) for r in (96, 128, 160, 192, 224)}
    assert points == grid | {(1.3, 224), (1.4, 224)}
    assert all(set(r.overrides) == {"width", "resolution", "seed"} for r in sweep.runs)
    assert "w0.75_r160_t6_s0" in [r.name for r in sweep.runs]
    assert sweep.runs[-1].name == "w1.4_r224_t6_s0"


def test_expansion_sweep():
    sweep = sweeps.load_sweep(str(SWEEPS / "expansion.py"))
    assert len(sweep.runs) == 15
    assert sweep.swept_keys == ("width", "expansion")
    assert {r.overrides["expansion"] for r in sweep.runs} == {2.0, 4.0, 6.0, 8.0, 10.0}
    assert {r.overrides["width"] for r in sweep.runs} == {0.35, 0.5, 1.0}
    assert "w0.35_r224_t2_s0" in [r.name for r in sweep.runs]


def test_ablation_sweeps():
    fig6a = sweeps.load_sweep(str(SWEEPS / "bottleneck_activation.py"))
    assert [r.name for r in fig6a.runs] == ["w1.0_r224_t6_s0", "w1.0_r224_t6_s0_relu6"]
    assert fig6a.swept_keys == ("bottleneck_activation",)
    fig6b = sweeps.load_sweep(str(SWEEPS / "residual.py"))
    assert [r.name for r in fig6b.runs] == [
        "w1.0_r224_t6_s0",
        "w1.0_r224_t6_s0_res-expansion",
        "w1.0_r224_t6_s0_res-none",
    ]
    # 'none' stays the string 'none' (config.apply_overrides would read bare 'none' as None).
    assert fig6b.resolved(fig6b.runs[2]).residual == "none"


def test_smoke_sweep_is_a_small_mnist_grid():
    sweep = sweeps.load_sweep(str(SWEEPS / "smoke.py"))
    assert sweep.config.startswith("configs/mnist.py")
    widths = {r.overrides["width"] for r in sweep.runs}
    resolutions = {r.overrides["resolution"] for r in sweep.runs}
    assert len(widths) >= 2 and len(resolutions) >= 2
    assert len(sweep.runs) == len(widths) * len(resolutions)
    assert all(sweep.resolved(r).dataset == "mnist_offline" for r in sweep.runs)


def test_names_are_unique_and_deterministic():
    for path in sorted(SWEEPS.glob("*.py")):
        a, b = sweeps.load_sweep(str(path)), sweeps.load_sweep(str(path))
        names = [r.name for r in a.runs]
        assert names == [r.name for r in b.runs], path
        assert len(set(names)) == len(names), path


def test_seeds_expand_seed_major(tmp_path):
    path = write_sweep(
        tmp_path,
        """
        def sweep(add):
            for width in (0.35, 0.5):
                add(width=width)
            add(width=1.0, seed=7)
        """,
        seeds=2,
    )
    sweep = sweeps.load_sweep(path)
    assert [r.name for r in sweep.runs] == [
        "w0.35_r32_t6_s0",
        "w0.5_r32_t6_s0",
        "w1.0_r32_t6_s7",
        "w0.35_r32_t6_s1",
        "w0.5_r32_t6_s1",
    ]
    assert sweep.swept_keys == ("width", "seed")


def test_names_carry_non_default_keys_only(tmp_path):
    default_lr = config_lib.load_config(MNIST).optim.lr
    path = write_sweep(
        tmp_path,
        f"""
        def sweep(add):
            add(bottleneck_activation="linear", **{{"optim.lr": 0.0123}})
            add(bottleneck_activation="relu6", residual="expansion", expansion=2.5, **{{"optim.lr": {default_lr}}})
        """,
    )
    names = [r.name for r in sweeps.load_sweep(path).runs]
    # Only departures from configs/mnist.py (a linear bottleneck, its own optim.lr) are named.
    assert names == ["w0.35_r32_t6_s0_optim.lr-0.0123", "w0.35_r32_t2.5_s0_relu6_res-expansion"]


def test_overrides_are_constants_outside_the_names(tmp_path):
    path = write_sweep(
        tmp_path,
        "OVERRIDES = {'max_repeats': 1, 'optim.lr': 0.02}\n\n"
        "def sweep(add):\n    add(width=0.35)\n    add(width=0.5, max_repeats=2)\n",
    )
    sweep = sweeps.load_sweep(path)
    assert [r.name for r in sweep.runs] == ["w0.35_r32_t6_s0", "w0.5_r32_t6_s0_rep2"]
    assert sweep.swept_keys == ("width", "max_repeats")
    assert [sweep.resolved(r).max_repeats for r in sweep.runs] == [1, 2]
    assert sweep.resolved(sweep.runs[0]).optim.lr == 0.02
    args = sweeps.train_args(sweep, sweep.runs[1], "/w")
    assert args.index("--config.max_repeats=1") < args.index("--config.max_repeats=2")  # the run's own wins
    sweeps.validate_global_overrides(sweep, {"optim.lr": "0.03"})  # a constant may be changed for all


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "add(width=0.5)\n    add(widht=0.35)",
            r"run #1 \(widht=0.35, seed=0\): config key 'widht' is not a known key",
        ),
        (
            "add(width=0.5)\n    add(width=0.5, residual='sideways')",
            "run w0.5_r32_t6_s0_res-sideways: config key 'residual'",
        ),
        ("add(width=-1.0)", "run w-1.0_r32_t6_s0: width"),
        ("add(width=0.5)\n    add(width=0.5)", "run w0.5_r32_t6_s0 .#1. is identical to run #0"),
        ("add(width=0.5, resolution=16)", "run w0.5_r16_t6_s0: resolution"),
        # Values are type-checked like --config.KEY=VALUE: the run, the key and the expected type.
        (
            "add(width=0.5)\n    add(width=0.5, seed='abc')",
            r"run #1 \(width=0.5, seed='abc'\): config key 'seed': expected an integer, got 'abc'",
        ),
        (
            "add(**{'augment.flip': 'ture'})",
            r"run #0 .*: config key 'augment.flip': expected a boolean \(true/false/1/0\), got 'ture'",
        ),
        (
            "add(total_steps=1.5)",
            r"run #0 .*: config key 'total_steps': expected an integer or None, got 1.5",
        ),
    ],
)
def test_validation_errors_name_the_run(tmp_path, body, message):
    path = write_sweep(tmp_path, f"def sweep(add):\n    {body}\n")
    with pytest.raises(ValueError, match=message):
        sweeps.load_sweep(path)


def test_sweep_file_errors(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("NAME = 'x'\n")
    with pytest.raises(ValueError, match="missing CONFIG, WANDB_PROJECT, SEEDS, sweep"):
        sweeps.load_sweep(str(bad))
    with pytest.raises(ValueError, match="not found"):
        sweeps.load_sweep(write_sweep(tmp_path, "def sweep(add):\n    add()\n", config="configs/nope.py"))


def test_global_overrides_are_validated_for_every_run(tmp_path):
    sweep = sweeps.load_sweep(
        write_sweep(tmp_path, "def sweep(add):\n    add(width=0.35)\n    add(width=0.5)\n")
    )
    with pytest.raises(ValueError, match="would override a key the sweep varies"):
        sweeps.validate_global_overrides(sweep, {"width": "1.0"})
    with pytest.raises(
        ValueError, match="run w0.35_r32_t6_s0 with the global overrides: config key 'totl_steps'"
    ):
        sweeps.validate_global_overrides(sweep, {"totl_steps": "3"})
    sweeps.validate_global_overrides(sweep, {"total_steps": "3"})
    with pytest.raises(
        ValueError,
        match=r"run w0.35_r32_t6_s0 with the global overrides: config key 'dropout_rate': expected a float",
    ):
        sweeps.validate_global_overrides(sweep, {"dropout_rate": "x"})


def test_wandb_agent_runs_are_type_checked(tmp_path):
    """A W&B sweep run's parameters meet the same checks; the error names the run, nothing is written."""
    overrides = launch.overrides_from_params({"config.width": 0.5, "config.augment": {"flip": "ture"}})
    with pytest.raises(
        ValueError,
        match=r"sweep run r1 \(width=0.5, augment.flip='ture'\): config key 'augment.flip': expected a boolean",
    ):
        launch.train_one(MNIST, str(tmp_path / "root"), overrides, run_id="r1", train_fn=lambda c, w: None)
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize(
    "value", ["none", "relu6", "True", "1.5", "a b 'c' \"d\"", "", 0.35, 96, None, True, (1.0, 6.0)]
)
def test_format_value_round_trips(value):
    assert config_lib.parse_value(sweeps.format_value(value)) == (
        list(value) if isinstance(value, tuple) else value
    )


def test_list_json_is_fast_and_imports_no_jax():
    code = textwrap.dedent(
        f"""
        import sys, time
        from mnv2_jax.cli import main
        t = time.time()
        main(["sweep", "list", {str(SWEEPS / "width_resolution.py")!r}, "--json"])
        assert not any(m in sys.modules for m in ("jax", "tensorflow", "wandb")), "heavy import"
        print(time.time() - t, file=sys.stderr)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    assert listing["count"] == 22 and len(listing["runs"]) == 22
    one = {r["name"]: r for r in listing["runs"]}["w1.0_r224_t6_s0"]
    assert one["madds"] == 300_774_272 and one["params"] == 3_470_760
    assert one["overrides"] == {"width": 1.0, "resolution": 224, "seed": 0}
    assert float(out.stderr.strip().splitlines()[-1]) < 3.0  # 2 loaded cores: lenient


# ---------------------------------------------------------------------------------------------
# The local runner, with a fake trainer

FAKE_TRAIN = r"""
import json, os, signal, sys, time
args = sys.argv[1:]
assert args[0] == "train", args
workdir = args[args.index("--workdir") + 1]
overrides = dict(a[len("--config."):].split("=", 1) for a in args if a.startswith("--config."))
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, "calls.jsonl"), "a") as f:
    f.write(json.dumps({"argv": args, "cache": os.environ.get("JAX_COMPILATION_CACHE_DIR")}) + "\n")
resumed = os.path.exists(os.path.join(workdir, "checkpoint"))
open(os.path.join(workdir, "config.json"), "w").close()
print("resuming" if resumed else "starting", flush=True)
if overrides.get("dataset") == "fail_me":
    print("ValueError: no dataset fail_me", flush=True)
    sys.exit(3)
def on_term(*_):
    open(os.path.join(workdir, "checkpoint"), "w").close()
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
open(os.path.join(workdir, "started"), "w").close()
time.sleep(0.1 if resumed else float(overrides.get("optim.lr", "0.01")) * 10)  # lr 10: a 100 s "run"
with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({"complete": True, "eval_ema/top1": 0.5, "resumed": resumed}, f)
"""


@pytest.fixture
def fake_train(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    return [sys.executable, str(script)]


def calls(workdir) -> list[dict]:
    path = pathlib.Path(workdir) / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_runner_skips_complete_runs_and_reports_failures(tmp_path, fake_train, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    path = write_sweep(
        tmp_path,
        """
        def sweep(add):
            add(width=0.35)
            add(width=0.5, dataset="fail_me")
            add(width=0.75)
        """,
    )
    sweep = sweeps.load_sweep(path)
    root = tmp_path / "root"
    lines: list[str] = []
    result = local.run_sweep(
        sweep,
        str(root),
        {"total_steps": "3"},
        parallel=2,
        command_prefix=fake_train,
        log=lines.append,
        poll_interval=0.05,
    )
    assert sorted(result.done) == ["w0.35_r32_t6_s0", "w0.75_r32_t6_s0"]
    failed_log = str(root / "w0.5_r32_t6_s0_dataset-fail-me" / "train.log")
    assert result.failed == [("w0.5_r32_t6_s0_dataset-fail-me", 3, failed_log)]
    assert result.exit_code == 1
    report = lines[-1]
    assert failed_log in report and "ValueError: no dataset fail_me" in report
    assert any(line.startswith("[") and "done w0.35_r32_t6_s0" in line for line in lines)

    # The command each run got: run overrides, global overrides, wandb group/name/tags, the cache.
    call = calls(root / "w0.35_r32_t6_s0")[0]
    assert call["cache"] == str(root / ".jax_cache")
    assert "--config.total_steps=3" in call["argv"] and "--config.width=0.35" in call["argv"]
    assert (
        "--config.wandb.group=tmp" in call["argv"] and "--config.wandb.name=w0.35_r32_t6_s0" in call["argv"]
    )
    assert "--config.wandb.tags=['width', 'dataset']" in call["argv"]
    record = json.loads((root / "w0.35_r32_t6_s0" / "sweep.json").read_text())
    assert record["sweep"] == "tmp" and record["run"] == "w0.35_r32_t6_s0"
    assert record["overrides"] == {"width": 0.35, "seed": 0} and record["global_overrides"] == {
        "total_steps": "3"
    }

    # Second invocation: complete runs are skipped (not started again), the failed one is retried.
    lines.clear()
    again = local.run_sweep(
        sweep,
        str(root),
        {"total_steps": "3"},
        command_prefix=fake_train,
        log=lines.append,
        poll_interval=0.05,
    )
    assert sorted(again.skipped) == ["w0.35_r32_t6_s0", "w0.75_r32_t6_s0"]
    assert len(calls(root / "w0.35_r32_t6_s0")) == 1
    assert len(calls(root / "w0.5_r32_t6_s0_dataset-fail-me")) == 2
    assert again.exit_code == 1 and "2 skipped" in lines[-1]

    # A complete run trained with another config than the sweep's now is reported as stale, not rerun.
    (root / "w0.35_r32_t6_s0" / "config.json").write_text(json.dumps({"optim": {"lr": 0.5}, "width": 0.35}))
    lines.clear()
    third = local.run_sweep(
        sweep,
        str(root),
        {"total_steps": "3"},
        command_prefix=fake_train,
        log=lines.append,
        poll_interval=0.05,
    )
    assert third.stale == ["w0.35_r32_t6_s0"] and "w0.35_r32_t6_s0" in third.skipped
    assert any("optim.lr: 0.5 -> " in line for line in lines)


def test_runner_sigterm_stops_runs_and_a_rerun_resumes(tmp_path, fake_train, monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "shared_cache"))
    path = write_sweep(
        tmp_path,
        """
        def sweep(add):
            add(width=0.35, **{"optim.lr": 10.0})  # a 100 s fake run: it will be stopped
            add(width=0.5)
        """,
    )
    sweep = sweeps.load_sweep(path)
    root = tmp_path / "root"
    first = root / sweep.runs[0].name

    def stop_when_started():
        for _ in range(400):
            if (first / "started").exists():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    threading.Thread(target=stop_when_started, daemon=True).start()
    lines: list[str] = []
    result = local.run_sweep(
        sweep, str(root), command_prefix=fake_train, log=lines.append, poll_interval=0.05
    )
    assert result.signal == signal.SIGTERM and result.exit_code == 143
    assert result.interrupted == [sweep.runs[0].name] and result.not_started == [sweep.runs[1].name]
    assert (first / "checkpoint").exists() and not (first / "summary.json").exists()
    assert calls(first)[0]["cache"] == str(tmp_path / "shared_cache")  # an explicit cache is kept

    # Rerun (a shorter run now, through a global override): the stopped run resumes.
    result = local.run_sweep(
        sweep,
        str(root),
        {"total_steps": "3"},
        command_prefix=fake_train,
        log=lines.append,
        poll_interval=0.05,
    )
    assert result.done == [r.name for r in sweep.runs] and result.exit_code == 0
    assert json.loads((first / "summary.json").read_text())["resumed"] is True
    assert any(line == f"resume {sweep.runs[0].name}" for line in lines)


def test_cli_run_exit_code(tmp_path, fake_train, monkeypatch):
    from mnv2_jax import cli

    path = write_sweep(tmp_path, "def sweep(add):\n    add(dataset='fail_me')\n")
    real = local.run_sweep
    monkeypatch.setattr(local, "run_sweep", lambda *a, **k: real(*a, **k, command_prefix=fake_train))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep", "run", path, "--workdir", str(tmp_path / "root"), "--config.total_steps=2"])
    assert exit_info.value.code == 1
    with pytest.raises(SystemExit) as exit_info:  # a misspelt global override: refused before any run
        cli.main(["sweep", "run", path, "--workdir", str(tmp_path / "root"), "--config.totl_steps=2"])
    assert exit_info.value.code == 2


# ---------------------------------------------------------------------------------------------
# Launch: SkyPilot tasks, commands

AWKWARD = 'gs://bucket/my sweeps/it\'s "here"'


def _launch_args(**kw) -> SimpleNamespace:
    base = dict(
        tpu="v4-32",
        workdir=AWKWARD,
        data_dir="gs://bucket/tf ds",
        use_spot=True,
        zone="us-central2-b",
        region=None,
        tasks_dir=None,
        dry_run=True,
        print_commands=False,
    )
    return SimpleNamespace(**{**base, **kw})


def _git(repo: pathlib.Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> pathlib.Path:
    """A git checkout with the smoke sweep and its config, committed; the working directory."""
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    (repo / "sweeps").mkdir()
    (repo / "configs" / "mnist.py").write_text((REPO / "configs" / "mnist.py").read_text())
    (repo / "sweeps" / "smoke.py").write_text((SWEEPS / "smoke.py").read_text())
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "sweep")
    monkeypatch.chdir(repo)
    return repo


def test_dry_run_writes_one_skypilot_task_per_run(checkout, tmp_path, capsys):
    sky = pytest.importorskip("sky")
    sweep = sweeps.load_sweep(str(checkout / "sweeps" / "smoke.py"))
    overrides = {"wandb.entity": "o'neil team", "total_steps": "3"}
    tasks_dir = tmp_path / "tasks"
    assert launch.main(sweep, _launch_args(tasks_dir=str(tasks_dir)), overrides, repo=str(checkout)) == 0
    commit = _git(checkout, "rev-parse", "HEAD")
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines() if line.startswith("sky ")]
    assert len(commands) == len(sweep.runs) == 4
    code = tasks_dir / f"code-{commit[:12]}"
    # The code the workers get is the commit's files, nothing else.
    shipped = sorted(str(p.relative_to(code)) for p in code.rglob("*") if p.is_file())
    assert shipped == sorted(_git(checkout, "ls-files").splitlines())
    for run, argv in zip(sweep.runs, commands):
        assert argv[:3] == ["sky", "jobs", "launch"] and argv[-1] == str(tasks_dir / f"{run.name}.yaml")
        task = sky.Task.from_yaml(argv[-1])  # SkyPilot's own schema and resource checks
        assert argv[argv.index("--name") + 1] == task.name and re.fullmatch(r"[a-z0-9-]+", task.name)
        (resources,) = task.resources
        assert resources.accelerators == {"tpu-v4-32": 1} and resources.use_spot
        assert resources.zone == "us-central2-b" and task.num_nodes == 1
        assert task.workdir == str(code)
        assert task.envs["TFDS_DATA_DIR"] == "gs://bucket/tf ds" and task.envs["MNV2_GIT_COMMIT"] == commit
        assert task.envs["MNV2_DISTRIBUTED"] == "1"
        # The run line is exactly the run's train command (from the workers' copy of the checkout).
        train = shlex.split(task.run.splitlines()[-1])
        assert train == launch.train_command(
            sweep, run, AWKWARD, overrides, prefix=("python", "-m", "mnv2_jax")
        )
        assert train[train.index("--workdir") + 1] == f"{AWKWARD}/{run.name}"
        parsed = config_lib.parse_override_args([w for w in train if w.startswith("--config.")])
        assert config_lib.parse_value(parsed["wandb.entity"]) == "o'neil team"


def test_launch_refuses_what_the_workers_would_not_run(checkout, tmp_path):
    sweep = sweeps.load_sweep(str(checkout / "sweeps" / "smoke.py"))
    tasks_dir = tmp_path / "tasks"

    def attempt(**kw):
        with pytest.raises(launch.LaunchError) as info:
            launch.main(sweep, _launch_args(tasks_dir=str(tasks_dir), **kw), {}, repo=str(checkout))
        assert not tasks_dir.exists()  # refused before anything was written
        return str(info.value)

    config = checkout / "configs" / "mnist.py"
    config.write_text(config.read_text() + "# an edit\n")
    message = attempt()
    assert "uncommitted changes (configs/mnist.py)" in message and "commit (or stash)" in message
    assert "uncommitted" in attempt(dry_run=False)  # the same with a real launch: nothing submitted
    _git(checkout, "checkout", "configs/mnist.py")

    # A config nobody committed: the workers would not have it.
    (checkout / "configs" / "mine.py").write_text(config.read_text())
    mine = dataclasses.replace(sweep, config_path=str(checkout / "configs" / "mine.py"))
    with pytest.raises(launch.LaunchError, match=r"configs/mine.py is not a committed file"):
        launch.main(mine, _launch_args(tasks_dir=str(tasks_dir)), {}, repo=str(checkout))

    not_a_checkout = tmp_path / "plain"
    not_a_checkout.mkdir()
    with pytest.raises(launch.LaunchError, match="ships the code of a git checkout"):
        launch.main(sweep, _launch_args(tasks_dir=str(tasks_dir)), {}, repo=str(not_a_checkout))
    assert "gs://BUCKET/PATH" in attempt(workdir="runs/local")
    assert "v4-32, v5litepod-16" in attempt(tpu="my-tpu-vm")
    assert not tasks_dir.exists()


def test_launch_writes_each_runs_manifest_to_the_bucket(checkout, gcs_bucket):
    from mnv2_jax import workdir as workdir_lib

    sweep = sweeps.load_sweep(str(checkout / "sweeps" / "smoke.py"))
    root = f"{gcs_bucket}/launched"
    launch.write_manifests(sweep, root, {"total_steps": "3"})
    (manifest,) = workdir_lib.read_sweep_manifests(root)
    assert manifest["runs"] == [run.name for run in sweep.runs]
    for run in sweep.runs:
        record = workdir_lib.read_sweep_record(f"{root}/{run.name}")
        assert record == json.loads(json.dumps(sweeps.sweep_record(sweep, run, {"total_steps": "3"})))
    with pytest.raises(launch.LaunchError, match=r"--workdir gs://no-such-bucket/x: cannot write gs://"):
        launch.write_manifests(sweep, "gs://no-such-bucket/x", {})


def test_print_commands(tmp_path, capsys):
    sweep = sweeps.load_sweep(str(SWEEPS / "width_resolution.py"))
    launch.main(sweep, _launch_args(print_commands=True, workdir="/data/my runs"), {})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 22
    argv = shlex.split(lines[0])
    assert argv[:6] == [
        "mnv2",
        "train",
        "--config",
        "configs/imagenet.py",
        "--workdir",
        "/data/my runs/w0.35_r96_t6_s0",
    ]


# ---------------------------------------------------------------------------------------------
# W&B


@pytest.mark.parametrize(
    "name", ["width_resolution", "expansion", "bottleneck_activation", "residual", "smoke"]
)
def test_export_wandb_grid_equals_the_sweep(name, tmp_path):
    import yaml

    from mnv2_jax import cli

    out = tmp_path / "sweep.yaml"
    cli.main(
        ["sweep", "export-wandb", str(SWEEPS / f"{name}.py"), "--out", str(out), "--workdir", "/runs/x y"]
    )
    config = yaml.safe_load(out.read_text())
    sweep = sweeps.load_sweep(str(SWEEPS / f"{name}.py"))
    assert config["method"] == "grid" and config["project"] == sweep.project
    assert config["command"][-1] == "${args}" and config["command"][:4] == [
        "${env}",
        "mnv2",
        "sweep",
        "train",
    ]
    grid = launch.wandb_grid(config)
    as_key = launch._key
    assert sorted(map(as_key, grid)) == sorted(as_key(r.overrides) for r in sweep.runs)
    assert len(grid) == len(sweep.runs)
    if name == "width_resolution":  # not a Cartesian product: one 'overrides' parameter
        assert list(config["parameters"]) == ["overrides"]
    else:
        assert all(k.startswith("config.") for k in config["parameters"])


@pytest.mark.parametrize("name", ["expansion", "residual", "width_resolution", "smoke"])
def test_wandb_agent_args_train_the_sweeps_runs(name, tmp_path, monkeypatch):
    """What `wandb agent` would run, formatted by wandb itself, lands in ROOT/<the sweep's run name>."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    from mnv2_jax import cli

    sweep = sweeps.load_sweep(str(SWEEPS / f"{name}.py"))
    config = launch.wandb_sweep_config(sweep, str(tmp_path / "runs"))
    trained = []
    # A stand-in for the training loop (and its heavy imports).
    monkeypatch.setitem(
        sys.modules,
        "mnv2_jax.train.loop",
        SimpleNamespace(train_and_evaluate=lambda c, w: trained.append((c, w))),
    )
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    monkeypatch.setenv("WANDB_PROJECT", "the-sweeps-project")
    names = []
    names_seen = set()
    for params in _grid_params(config)[:4]:
        args = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})["args"]
        command = [a for a in config["command"][1:] if a != "${args}"] + args
        cli.main(command[1:])
        c, workdir = trained[-1]
        names.append(os.path.basename(workdir))
        names_seen.add(names[-1])
        assert (
            c.wandb.group == sweep.name
            and c.wandb.name == names[-1]
            and c.wandb.project == "the-sweeps-project"
        )
        assert (pathlib.Path(workdir) / "wandb_run_id").read_text() == "abc123"
        assert c == _with_wandb(sweep.resolved(sweep.run(names[-1])), c)  # the very config `sweep run` trains
    assert set(names) <= {r.name for r in sweep.runs} and len(names_seen) == len(names)


def _with_wandb(config, like):
    config = config_lib.apply_overrides(config, {})
    config.wandb = like.wandb
    return config


def _grid_params(config) -> list[dict]:
    import itertools

    keys = list(config["parameters"])
    choices = [s.get("values", [s.get("value")]) for s in config["parameters"].values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*choices)]


def test_payload_round_trip_and_broadcast():
    job = {"config": "configs/mnist.py", "overrides": {"width": 0.5, "name": 'it\'s "x" é'}, "run_id": "r1"}
    assert launch.decode_payload(launch.encode_payload(job, 1024)) == job
    with pytest.raises(ValueError, match="does not fit"):
        launch.encode_payload({"x": "y" * 2000}, 1024)
    assert launch.broadcast_job(job, True, size=1024) == job  # one process: its own job


def test_multihost_agent_with_mocks(tmp_path):
    jobs = [
        {"config": MNIST, "overrides": {"config.width": 0.5, "config.seed": 0}, "run_id": "a"},
        {"config": MNIST, "overrides": {"config.width": 0.35, "config.seed": 0}, "run_id": "b"},
    ]
    server = [
        {
            "config": j["config"],
            "overrides": launch.overrides_from_params(j["overrides"]),
            "group": "smoke",
            "tags": ["width"],
            "project": "p",
            "entity": "e",
            "run_id": j["run_id"],
        }
        for j in jobs
    ]
    queue = list(server)
    wire: list = []

    def next_job(sweep_id, config):
        assert sweep_id == "e/p/sid"
        return queue.pop(0) if queue else None

    def broadcast_source(job, is_source):
        assert is_source
        wire.append(json.loads(json.dumps(job)))
        return launch.decode_payload(launch.encode_payload(job))

    trained0, trained1 = [], []
    rc = launch.agent(
        "e/p/sid",
        str(tmp_path / "h0"),
        next_job_fn=next_job,
        broadcast=broadcast_source,
        train_fn=lambda c, w: trained0.append((c, w)),
        process_index=0,
    )
    assert rc == 0 and wire[-1] == {"done": True} and len(trained0) == 2

    # Another host: never asks the server, trains what process 0 broadcast, writes no files.
    replay = iter(wire)

    def broadcast_other(job, is_source):
        assert not is_source and job is None
        return next(replay)

    rc = launch.agent(
        "e/p/sid",
        str(tmp_path / "h1"),
        next_job_fn=lambda *a: pytest.fail("asked the server"),
        broadcast=broadcast_other,
        train_fn=lambda c, w: trained1.append((c, w)),
        process_index=1,
    )
    assert rc == 0
    r = config_lib.load_config(MNIST).resolution  # the agent runs the config file as it is
    assert [os.path.basename(w) for _, w in trained0] == [f"w0.5_r{r}_t6_s0", f"w0.35_r{r}_t6_s0"]
    assert [os.path.basename(w) for _, w in trained1] == [f"w0.5_r{r}_t6_s0", f"w0.35_r{r}_t6_s0"]
    assert (tmp_path / "h0" / f"w0.5_r{r}_t6_s0" / "wandb_run_id").read_text() == "a"
    assert not (tmp_path / "h1").exists()
    assert trained0[0][0].wandb.group == "smoke" and trained0[0][0].wandb.tags == ("width",)


def test_next_job_from_a_fake_wandb(monkeypatch):
    class FakeRun:
        config = {"config.width": 0.5, "config.resolution": 48, "config.seed": 0}
        id, project, entity, sweep_id = "rid", "proj", "ent", "sid"

    command = [
        "${env}",
        "mnv2",
        "sweep",
        "train",
        "--config",
        "configs/mnist.py",
        "--workdir-root",
        "r",
        "--group",
        "smoke",
        "--tags",
        "width,resolution",
        "--fixed",
        '{"max_repeats": 1}',
        "${args}",
    ]
    fake = SimpleNamespace(
        init=lambda: FakeRun(),
        agent=lambda sweep_id, function, count: function(),
        Api=lambda: SimpleNamespace(sweep=lambda path: SimpleNamespace(config={"command": command})),
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    job = launch.next_job("sid")
    assert job == {
        "config": "configs/mnist.py",
        "overrides": {"width": 0.5, "resolution": 48, "seed": 0},
        "fixed": {"max_repeats": 1},
        "group": "smoke",
        "tags": ["width", "resolution"],
        "project": "proj",
        "entity": "ent",
        "run_id": "rid",
    }
    fake.agent = lambda sweep_id, function, count: None  # sweep exhausted: the function never runs
    assert launch.next_job("sid") is None


# ---------------------------------------------------------------------------------------------
# End to end with the real trainer (a few steps per run on the offline MNIST config)


@pytest.mark.slow  # about a minute cold; the runner's logic is covered above with a fake trainer
def test_real_sweep_skip_resume_and_failure(tmp_path):
    """`mnv2 sweep run`: a run stopped by SIGTERM resumes, complete runs are skipped, a failing run
    leaves the others finished and is listed with its log path."""
    path = write_sweep(
        tmp_path,
        """
        def sweep(add):
            add(width=0.35, total_steps=3)
            add(width=0.35, total_steps=60, seed=1)                  # stopped mid-run, then resumed
            add(width=0.35, total_steps=3, dataset="no_such_dataset")  # fails: no such TFDS dataset
        """,
        name="e2e",
    )
    root = tmp_path / "root"
    env = dict(os.environ, WANDB_MODE="disabled")
    # One simulated device is enough here, and compiles faster than the suite's 8.
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    command = [
        sys.executable,
        "-m",
        "mnv2_jax",
        "sweep",
        "run",
        path,
        "--workdir",
        str(root),
        "--config.max_repeats=1",
        "--config.log_every_steps=1",
        "--config.eval_every_steps=1000",
        "--config.checkpoint_every_steps=1000",
    ]
    a, b, bad = (root / run.name for run in sweeps.load_sweep(path).runs)

    runner = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and runner.poll() is None:
        metrics = b / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            runner.send_signal(signal.SIGTERM)
            break
        time.sleep(0.2)
    out, _ = runner.communicate(timeout=300)
    assert runner.returncode == 143, out
    assert workdir_lib.is_complete(str(a)) and not workdir_lib.is_complete(str(b)), out
    assert "interrupted" in out and not bad.exists()

    out = subprocess.run(command + ["--parallel", "2"], env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 1, out.stdout + out.stderr
    report = out.stdout
    assert "1 skipped" in report
    assert (a / "train.log").read_text().count("=== mnv2 sweep") == 1  # not started again
    assert workdir_lib.is_complete(str(b)) and "resuming" in (b / "train.log").read_text()
    assert json.loads((b / "summary.json").read_text())["step"] == 60
    assert f"FAILED {bad.name}" in report and str(bad / "train.log") in report
    summary = json.loads((a / "summary.json").read_text())
    record = json.loads((a / "sweep.json").read_text())
    assert summary["width"] == 0.35 and summary["madds"] > 0 and "eval_ema/top1" in summary
    assert record["sweep"] == "e2e" and record["run"] == a.name
