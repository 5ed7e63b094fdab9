"""The training loop end to end (`mnv2_jax.train.loop.train_and_evaluate` and `mnv2 train`) on offline MNIST.

A tiny network (width 0.35, resolution 32, one block per row of Table 2) on the 4,500/500 offline digits,
batch 32, 8 simulated CPU devices (tests/conftest.py). One completed 30-step run (`base_run`) serves as
the reference for most checks; the others copy its workdir or repeat its config, so that every compiled
function comes from the persistent compilation cache after the first.

Set MNV2_TEST_DATA_DIR (or TFDS_DATA_DIR) to reuse a prepared TFDS data dir between runs.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import numpy as np
import pytest
from conftest import model_for

import mnv2_jax
from mnv2_jax import cli, runs
from mnv2_jax import config as config_lib
from mnv2_jax import workdir as workdir_lib
from mnv2_jax.data import input_pipeline as data
from mnv2_jax.tasks import get_task
from mnv2_jax.train import checkpoint as checkpointing
from mnv2_jax.train import loop as train
from mnv2_jax.train import optim
from mnv2_jax.train import state as state_lib
from mnv2_jax.train import step as steps
from mnv2_jax.train import writer as writer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(REPO, "configs", "mnist.py")
STEPS = 30
# Everything but data_dir; the CLI runs pass the same values as --config.KEY=VALUE.
OVERRIDES = {
    "resolution": 32,
    "max_repeats": 1,
    "batch_size": 32,
    "eval_batch_size": 64,  # 500 = 7 * 64 + 52: the last eval batch is padded
    "total_steps": STEPS,
    "log_every_steps": 10,
    "eval_every_steps": STEPS,
    "checkpoint_every_steps": 10,
    "keep_checkpoints": 5,
    "progress": True,
}
EVAL_EXAMPLES = 500  # mnist_offline's test split
DESIGN_KEYS = ("step", "train/loss", "train/top1", "lr", "train/images_per_sec")
EVAL_KEYS = tuple(f"{p}/{m}" for p in ("eval", "eval_ema") for m in ("loss", "top1", "top5"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    path = os.environ.get("MNV2_TEST_DATA_DIR") or os.environ.get("TFDS_DATA_DIR")
    return path or str(tmp_path_factory.mktemp("tfds"))


def make_config(data_dir: str, **overrides):
    config = config_lib.load_config(CONFIG_FILE)
    return config_lib.apply_overrides(config, {**OVERRIDES, "data_dir": data_dir, **overrides})


def cli_args(workdir: str, data_dir: str, **overrides) -> list[str]:
    values = {**OVERRIDES, "data_dir": data_dir, **overrides}
    return ["train", "--config", CONFIG_FILE, "--workdir", workdir] + [
        f"--config.{k}={v}" for k, v in values.items()
    ]


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not (k.endswith("_per_sec") or "time" in k)} for r in records]


def restore_state(workdir: str) -> state_lib.TrainState:
    """The whole train state of the latest checkpoint (weights, optimizer, EMA, RNG, ...)."""
    config = runs.read_config(workdir)
    model = model_for(config, config.num_classes)
    tx = optim.create_optimizer(config, steps_per_epoch=1)
    abstract = jax.eval_shape(lambda: state_lib.create_train_state(model, tx, config.resolution, 0))
    checkpointer = checkpointing.Checkpointer(workdir)
    try:
        return jax.device_get(checkpointer.restore(abstract))
    finally:
        checkpointer.close()


def assert_states_identical(a: state_lib.TrainState, b: state_lib.TrainState) -> None:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def checkpoint_steps(workdir: str) -> list[int]:
    """The finished checkpoints' steps. Locally orbax renames a finished step into place; on GCS
    it writes the step in place and marks it finished with `commit_success.txt`."""
    directory = workdir_lib.path(workdir, "checkpoints")
    names = [p.name for p in directory.iterdir()] if directory.is_dir() else []

    def finished(name: str) -> bool:
        return workdir_lib.is_local(directory) or (directory / name / "commit_success.txt").exists()

    return sorted(int(n) for n in names if n.isdigit() and finished(n))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, data_dir):
    """A completed 30-step run: (workdir, summary)."""
    workdir = str(tmp_path_factory.mktemp("base") / "run")
    summary = train.train_and_evaluate(make_config(data_dir), workdir)
    return workdir, summary


def copy_run(base_run, tmp_path) -> str:
    workdir = str(tmp_path / "run")
    shutil.copytree(base_run[0], workdir)
    return workdir


def test_run_writes_the_documented_files(base_run, data_dir):
    workdir, summary = base_run
    assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "metrics.jsonl", "summary.json"]

    with open(os.path.join(workdir, "config.json")) as f:
        stored = json.load(f)
    assert stored["total_steps"] == STEPS and stored["batch_size"] == 32 and stored["data_dir"] == data_dir
    assert stored["num_classes"] == 10
    # Resolved: every value the recipe uses is filled in. None is left only where the recipe turns a
    # key off (clipping) or uses another (the slim recipe decays per epochs, not `lr_decay_steps`,
    # and its exponential schedule has no `lr_power`).
    unused = {"grad_clip_norm", "lr_decay_steps", "lr_power"}
    assert all(v is not None for k, v in stored["optim"].items() if k not in unused)
    # configs/mnist.py: TF-Slim RMSProp with a cosine decay (a short run).
    assert stored["optim"]["optimizer"] == "rmsprop" and stored["optim"]["lr_schedule"] == "cosine"
    provenance = stored["provenance"]
    for key in ("git_commit", "versions", "python", "backend", "devices", "time"):
        assert key in provenance
    assert provenance["backend"] == "cpu" and len(provenance["devices"]) == 8
    assert "jax" in provenance["versions"]

    records = workdir_lib.read_metrics(workdir)
    assert [r["step"] for r in records] == [10, 20, 30]
    for r in records:
        assert set(DESIGN_KEYS) <= r.keys()
        assert np.isfinite(r["train/loss"]) and 0 <= r["train/top1"] <= 1 and r["lr"] > 0
        assert r["train/images_per_sec"] > 0
    assert not set(EVAL_KEYS) & (records[0].keys() | records[1].keys())
    last = records[-1]
    assert set(EVAL_KEYS) <= last.keys()
    for prefix in ("eval", "eval_ema"):
        assert 0 <= last[f"{prefix}/top1"] <= last[f"{prefix}/top5"] <= 1
        # Accuracies over 500 examples are multiples of 1/500.
        assert last[f"{prefix}/top1"] * EVAL_EXAMPLES == pytest.approx(
            round(last[f"{prefix}/top1"] * EVAL_EXAMPLES)
        )
    # `lr` at step k is the learning rate of update k, which sees k - 1 earlier updates (warm-up here).
    config = make_config(data_dir)
    schedule = optim.learning_rate_schedule(config, data.steps_per_epoch(config))
    for r in records:
        assert r["lr"] == pytest.approx(float(schedule(r["step"] - 1)), rel=1e-6)
    assert records[0]["lr"] < records[1]["lr"] < records[2]["lr"]

    with open(os.path.join(workdir, "summary.json")) as f:
        on_disk = json.load(f)
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["complete"] is True and summary["step"] == STEPS
    assert isinstance(summary["madds"], int) and summary["madds"] > 0
    assert isinstance(summary["params"], int) and summary["params"] > 0
    for key in ("width", "resolution", "expansion", "dataset", "seed", "recipe", *EVAL_KEYS):
        assert key in summary
    assert summary["eval/top1"] == last["eval/top1"] and summary["eval_ema/top1"] == last["eval_ema/top1"]
    from mnv2_jax import accounting

    config = make_config(data_dir)
    counts = accounting.count(config_lib.architecture_from_config(config, 10), config.resolution)
    assert (summary["madds"], summary["params"]) == (counts.madds, counts.params)

    assert checkpoint_steps(workdir) == [10, 20, 30]
    state = restore_state(workdir)
    assert int(state.step) == STEPS
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


def test_rerun_of_a_complete_run_does_not_retrain(base_run, tmp_path, data_dir):
    workdir = copy_run(base_run, tmp_path)
    before_metrics = read_text(os.path.join(workdir, "metrics.jsonl"))
    before_state = restore_state(workdir)
    summary = train.train_and_evaluate(make_config(data_dir), workdir)
    assert summary == base_run[1]
    assert read_text(os.path.join(workdir, "metrics.jsonl")) == before_metrics
    assert checkpoint_steps(workdir) == [10, 20, 30]
    assert_states_identical(restore_state(workdir), before_state)


def test_resume_with_a_different_config_is_refused(base_run, tmp_path, data_dir):
    workdir = copy_run(base_run, tmp_path)
    config_before = read_text(os.path.join(workdir, "config.json"))
    changed = make_config(data_dir, seed=1, dropout_rate=0.3)
    with pytest.raises(ValueError, match="different config") as info:
        train.train_and_evaluate(changed, workdir)
    message = str(info.value)
    differing = re.findall(r"^  (\S+): workdir has", message, flags=re.M)
    assert differing == ["dropout_rate", "seed"]
    assert "workdir has 0, command has 1" in message and "--overwrite" in message
    assert read_text(os.path.join(workdir, "config.json")) == config_before  # nothing was touched

    # --overwrite: resumes anyway (the run is complete, so nothing trains) and records the new config.
    summary = train.train_and_evaluate(changed, workdir, overwrite=True)
    assert summary["complete"] and summary["step"] == STEPS and summary["seed"] == 1
    assert runs.read_config(workdir).seed == 1
    assert checkpoint_steps(workdir) == [10, 20, 30]


def test_more_total_steps_extends_the_run(base_run, tmp_path, data_dir, capsys):
    workdir = copy_run(base_run, tmp_path)
    capsys.readouterr()
    summary = train.train_and_evaluate(make_config(data_dir, total_steps=40), workdir)
    # The console: the compile announced and timed, then the step line with its time left.
    out = capsys.readouterr().out.splitlines()
    compiling = [i for i, line in enumerate(out) if line.startswith("compiling the train step")]
    assert len(compiling) == 2 and out[compiling[0]] == "compiling the train step ..."
    assert re.match(r"compiling the train step: done in \d+\.\d s$", out[compiling[1]]), out
    assert any(re.match(r"step +40/40  loss \d\.\d{4} +\d+\.\d img/s  ETA 00:00$", line) for line in out), out
    assert summary["complete"] and summary["step"] == 40 and summary["total_steps"] == 40
    records = workdir_lib.read_metrics(workdir)
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert without_timing(records[:3]) == without_timing(workdir_lib.read_metrics(base_run[0]))
    assert set(EVAL_KEYS) <= records[-1].keys()
    assert checkpoint_steps(workdir) == [10, 20, 30, 40]
    assert int(restore_state(workdir).step) == 40


def _start_cli(workdir: str, data_dir: str, log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mnv2_jax", *cli_args(workdir, data_dir)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a signal to it reaches no one else
    )


def _interrupt_after_first_checkpoint(workdir: str, data_dir: str, sig: int, tmp_path) -> tuple[int, str]:
    log_path = str(tmp_path / "log.txt")
    with open(log_path, "w") as log:
        process = _start_cli(workdir, data_dir, log)
    try:
        deadline = time.time() + 300
        while not checkpoint_steps(workdir):
            assert process.poll() is None, read_text(log_path)
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.1)
        process.send_signal(sig)
        rc = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return rc, read_text(log_path)


def _assert_same_as_base(workdir: str, base_run) -> None:
    assert_states_identical(restore_state(workdir), restore_state(base_run[0]))
    assert without_timing(workdir_lib.read_metrics(workdir)) == without_timing(
        workdir_lib.read_metrics(base_run[0])
    )
    summary = workdir_lib.read_summary(workdir)
    assert without_timing([summary]) == without_timing([json.loads(json.dumps(base_run[1]))])


def test_sigkill_and_rerun_is_bit_identical(base_run, tmp_path, data_dir):
    workdir = str(tmp_path / "run")
    rc, log = _interrupt_after_first_checkpoint(workdir, data_dir, signal.SIGKILL, tmp_path)
    assert rc == -signal.SIGKILL, log
    assert not os.path.exists(os.path.join(workdir, "summary.json"))
    killed_at = checkpoint_steps(workdir)
    assert killed_at and killed_at[-1] < STEPS, "the run finished before it was killed"

    # Rerun the same command: it resumes from the last checkpoint and ends where the uninterrupted run did.
    result = subprocess.run(
        [sys.executable, "-m", "mnv2_jax", *cli_args(workdir, data_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming {workdir} at step {killed_at[-1]}/{STEPS}" in result.stdout
    _assert_same_as_base(workdir, base_run)


def test_sigterm_checkpoints_and_rerun_is_bit_identical(base_run, tmp_path, data_dir):
    workdir = str(tmp_path / "run")
    rc, log = _interrupt_after_first_checkpoint(workdir, data_dir, signal.SIGTERM, tmp_path)
    assert rc == 143, log
    stopped = re.search(r"SIGTERM: checkpoint at step (\d+) written", log)
    assert stopped, log
    step = int(stopped.group(1))
    assert 10 <= step <= STEPS
    assert checkpoint_steps(workdir)[-1] == step
    assert int(restore_state(workdir).step) == step
    assert max(r["step"] for r in workdir_lib.read_metrics(workdir)) <= step

    # Resume in-process (the same config through the API): ends bit-identical to the uninterrupted run.
    summary = train.train_and_evaluate(make_config(data_dir), workdir)
    assert summary["complete"] and summary["step"] == STEPS
    _assert_same_as_base(workdir, base_run)


def test_gs_workdir_trains_resumes_after_sigkill_and_plots(base_run, gcs_bucket, tmp_path, data_dir):
    """A run in a bucket (a local GCS server): killed after its first checkpoint, rerun, bit-identical."""
    root = f"{gcs_bucket}/sweep"
    workdir = f"{root}/w0.35_r32"
    rc, log = _interrupt_after_first_checkpoint(workdir, data_dir, signal.SIGKILL, tmp_path)
    assert rc == -signal.SIGKILL, log
    assert workdir_lib.read_summary(workdir) is None and not os.path.exists(os.path.join(REPO, "gs:"))
    result = subprocess.run(
        [sys.executable, "-m", "mnv2_jax", *cli_args(workdir, data_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    resumed = re.search(rf"resuming {workdir} at step (\d+)/{STEPS}", result.stdout)
    assert resumed and int(resumed.group(1)) in (10, 20), result.stdout
    _assert_same_as_base(workdir, base_run)
    files = sorted(p.name for p in workdir_lib.path(workdir).iterdir())
    assert files == ["checkpoints", "config.json", "metrics.jsonl", "summary.json"]

    # load_run and the plots read from the bucket too (and the plots go there).
    module, variables, config = mnv2_jax.load_run(workdir)
    assert config.total_steps == STEPS
    assert_states_identical(variables["params"], restore_state(base_run[0]).ema_params)
    cli.main(["plot", "table", root])
    table = workdir_lib.path(root, "plots", "table.csv").read_text()
    top1 = workdir_lib.read_summary(workdir)["eval_ema/top1"]
    assert len(table.splitlines()) == 2 and f"{top1}" in table, table


def test_unwritable_workdir_is_refused_before_training(gcs_bucket, tmp_path, data_dir):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for workdir in ("gs://no-such-bucket/run", str(blocker / "run")):
        with pytest.raises(ValueError, match=rf"^--workdir {re.escape(workdir)}: cannot write there"):
            train.train_and_evaluate(make_config(data_dir), workdir)


def test_non_finite_step_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
    bad_step = 4  # the 4th update sees a NaN pixel
    real_iterator = data.train_iterator

    def poisoned(config, start_step=0):
        for step, batch in enumerate(real_iterator(config, start_step), start=start_step + 1):
            if step == bad_step:
                batch = dict(batch, image=batch["image"].copy())
                batch["image"][0, 0, 0, 0] = np.nan
            yield batch

    monkeypatch.setattr(data, "train_iterator", poisoned)
    workdir = str(tmp_path / "run")
    with pytest.raises(train.NonFiniteError, match=rf"at step {bad_step}\b") as info:
        train.train_and_evaluate(make_config(data_dir, checkpoint_every_steps=3), workdir)
    assert "(step 3)" in str(info.value)
    assert checkpoint_steps(workdir) == [3]
    assert not os.path.exists(os.path.join(workdir, "summary.json"))
    module, variables, config = runs.load_run(workdir, ema=False)
    assert config.total_steps == STEPS
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(variables))
    assert int(restore_state(workdir).step) == 3


# Config keys a sweep varies (seed, learning rate, weight decay) or that only the input pipeline and
# the bookkeeping read: none of them may change the compiled steps, so a sweep over them compiles
# once and every later run loads the steps from the persistent compilation cache.
NOT_COMPILED = {
    "seed": 7, "wandb.mode": "disabled", "progress": False, "log_every_steps": 3, "eval_every_steps": 7,
    "checkpoint_every_steps": 5, "keep_checkpoints": 1, "init_from": "/elsewhere", "data_dir": "/elsewhere",
    "download": True, "cache": False, "shuffle_buffer": 10, "augment.flip": False, "eval_crop": 1.0,
    "dataset": "mnist", "train_split": "train[:50%]", "eval_split": "train[50%:]", "num_train_examples": 1000,
    "num_eval_examples": 100, "eval_batch_size": 16, "total_epochs": 3.0, "total_steps": 40,
    "optim.lr": 0.5, "optim.lr_reference_batch": 64, "optim.weight_decay": 0.1,
}  # fmt: skip


def test_swept_scalars_and_data_keys_do_not_change_the_compiled_steps(data_dir):
    def lowered(config):
        config = train.resolve_config(config, 10)
        task = get_task(config)
        model = task.model(10)
        tx = optim.create_optimizer(config, steps_per_epoch=140)
        opt = optim.resolve_optim(config)
        step = steps.make_train_step(
            model, tx, loss_fn=task.loss, ema_decay=opt["ema_decay"], bn_groups=train.bn_groups(config)
        )
        state = jax.eval_shape(
            lambda: state_lib.create_train_state(model, tx, config.resolution, 0, task.train_metrics)
        )
        batch = {
            "image": jax.ShapeDtypeStruct(
                (config.batch_size, config.resolution, config.resolution, 3), np.float32
            ),
            "label": jax.ShapeDtypeStruct((config.batch_size,), np.int32),
        }
        variables = state_lib.eval_variables(state, ema=True)
        return (
            jax.jit(step).lower(state, batch).as_text(),
            jax.jit(lambda v, b: task.eval_outputs(model, v, b)).lower(variables, batch).as_text(),
        )

    base = make_config(data_dir)
    assert lowered(base) == lowered(config_lib.apply_overrides(make_config(data_dir), NOT_COMPILED))
    changed = config_lib.apply_overrides(make_config(data_dir), {"optim.momentum": 0.5})
    assert lowered(changed)[0] != lowered(base)[0]  # the comparison can see a change


def test_eval_counts_every_example_once(base_run):
    workdir, summary = base_run
    result = runs.evaluate_workdir(workdir)
    assert result["step"] == STEPS
    assert result["eval/examples"] == result["eval_ema/examples"] == EVAL_EXAMPLES
    # Re-evaluating the final checkpoint gives what the run logged at its last step.
    for key in ("eval/top1", "eval/top5", "eval_ema/top1", "eval_ema/top5"):
        assert result[key] == summary[key], key
    for key in ("eval/loss", "eval_ema/loss"):
        assert result[key] == pytest.approx(summary[key], rel=1e-5)


def test_wandb_offline_writes_run_files(base_run, tmp_path, data_dir, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    workdir = copy_run(base_run, tmp_path)
    # wandb is one of the keys a resumed run may change; the run is complete, so only logging happens.
    summary = train.train_and_evaluate(make_config(data_dir, **{"wandb.mode": "offline"}), workdir)
    assert summary["complete"]
    runs = glob.glob(os.path.join(workdir, "wandb", "offline-run-*"))
    assert runs, os.listdir(workdir)
    run_id = read_text(os.path.join(workdir, workdir_lib.WANDB_ID)).strip()
    assert any(run.endswith(run_id) for run in runs)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_wandb_unreachable_server_goes_offline_in_one_line_and_training_goes_on(
    base_run, tmp_path, data_dir, monkeypatch, capsys
):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    config = make_config(data_dir, total_steps=40)  # wandb.mode 'auto'

    # The writer alone: the decision takes a refused connection, not wandb's retries.
    alone = tmp_path / "alone"
    alone.mkdir()
    start = time.monotonic()
    writer_lib.MetricWriter(str(alone), {}, config.wandb).close()
    seconds = time.monotonic() - start
    assert seconds < 20, f"wandb set-up took {seconds:.1f} s with an unreachable server"
    lines = [line for line in capsys.readouterr().out.splitlines() if "wandb" in line]
    assert len(lines) == 1, lines
    where = lines[0].split("run files in ", 1)[1].split(";", 1)[0]
    assert "does not answer" in lines[0] and lines[0].endswith(f"wandb sync {where}")
    assert os.path.isdir(where) and where.startswith(str(alone / "wandb"))

    # A run resumed under the same conditions trains its 10 more steps and logs them offline.
    workdir = copy_run(base_run, tmp_path)
    summary = train.train_and_evaluate(config, workdir)
    assert summary["complete"] and summary["step"] == 40
    assert [r["step"] for r in workdir_lib.read_metrics(workdir)][-1] == 40
    assert glob.glob(os.path.join(workdir, "wandb", "offline-run-*"))


def test_wandb_key_from_a_self_hosted_login(tmp_path, monkeypatch):
    from mnv2_jax import wandb_mode

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine wandb.example.org\n  login user\n  password " + "1" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    port = _closed_port()

    # The login is for wandb.example.org: it counts for that server only.
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert wandb_mode.key_source() == str(netrc)
    monkeypatch.delenv("WANDB_BASE_URL")
    assert wandb_mode.key_source() is None  # api.wandb.ai has no entry
    mode, why = wandb_mode.decide("auto")
    assert mode == "offline" and "no API key" in why and "api.wandb.ai" in why

    # A self-hosted server on this machine: the key is found, so the server is asked (and is down).
    netrc.write_text("machine 127.0.0.1 login user password " + "1" * 40 + "\n")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    mode, why = wandb_mode.decide("auto")
    assert mode == "offline" and "does not answer" in why and str(port) in why
    assert wandb_mode.decide("disabled") == ("disabled", "config wandb.mode='disabled'")


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"residual": "bogus"}, r"'residual'.*'bottleneck'.*'expansion'.*'none'.*'bogus'"),
        ({"wandb.mode": "sometimes"}, r"'wandb.mode'.*'offline'.*'sometimes'"),
        ({"total_epochs": 3.0}, r"'total_steps' and 'total_epochs'"),
        ({"batch_size": 0}, r"'batch_size'"),
        # The 8 simulated devices (tests/conftest.py): global batches must split over them.
        ({"batch_size": 30}, r"'batch_size': 30 does not split evenly over 8 devices; .* 24 or 32"),
        ({"eval_batch_size": 60}, r"'eval_batch_size': 60 .* 56 or 64"),
    ],
)
def test_invalid_value_is_refused_before_anything_runs(tmp_path, data_dir, overrides, pattern):
    workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match=pattern):
        train.train_and_evaluate(make_config(data_dir, **overrides), workdir)
    assert not os.path.exists(workdir)


def test_unknown_key_is_refused_before_anything_runs(tmp_path, data_dir, capsys):
    workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match=r"'widht'.*Did you mean width"):
        make_config(data_dir, widht=0.5)
    config = make_config(data_dir)
    config.optim.learning_rate = 0.1  # a key no config has (ConfigDicts accept new attributes)
    with pytest.raises(ValueError, match=r"'optim.learning_rate' is not a known key"):
        train.train_and_evaluate(config, workdir)
    assert not os.path.exists(workdir)

    # The command line: one line naming the key, exit status 2, nothing written.
    for flag, pattern in (
        ("--config.widht=0.5", r"'widht' is not a known key.*Did you mean width"),
        ("--config.residual=bogus", r"'residual': must be one of"),
    ):
        with pytest.raises(SystemExit) as info:
            cli.main(cli_args(workdir, data_dir) + [flag])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert re.search(pattern, err) and "mnv2 train: error:" in err, err
        assert not os.path.exists(workdir)


def test_offline_mnist_learns(tmp_path, data_dir):
    """150 steps at the config's own batch of 128 (about 4 epochs of the 4,500 digits), tiny network.

    Observed while writing this test: eval top-1 0.86 (raw) and 0.89 (EMA); chance is 0.1 on the 10
    balanced classes. The bounds leave a wide margin for other seeds and platforms.
    """
    workdir = str(tmp_path / "run")
    config = make_config(
        data_dir,
        batch_size=128,
        total_steps=150,
        eval_every_steps=150,
        log_every_steps=50,
        checkpoint_every_steps=150,
    )
    summary = train.train_and_evaluate(config, workdir)
    records = workdir_lib.read_metrics(workdir)
    assert [r["step"] for r in records] == [50, 100, 150]
    assert records[-1]["train/loss"] < 0.75 * records[0]["train/loss"]
    assert summary["eval/top1"] > 0.6 and summary["eval_ema/top1"] > 0.6, summary


def test_init_from_a_finished_run_starts_from_its_averaged_weights(tmp_path, data_dir, base_run):
    """The new run's weights and their average start as the finished run's averaged weights (in
    separate buffers: the train step donates the state) and training goes on from there."""
    source, _ = base_run
    workdir = str(tmp_path / "finetune")
    summary = train.train_and_evaluate(make_config(data_dir, total_steps=2, init_from=source), workdir)
    assert summary["complete"] and summary["step"] == 2
    assert all(np.isfinite(r["train/loss"]) for r in workdir_lib.read_metrics(workdir) if "train/loss" in r)
