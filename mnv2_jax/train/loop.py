"""The training loop: one run, one workdir, resumable by rerunning the command.

    mnv2 train --config configs/mnist.py --workdir runs/mnist

Data-parallel over every device of every host: the train step is jitted over
a one-axis mesh ('data'); each process feeds its own slice of the global
batch (`jax.make_array_from_process_local_data`). Process 0 alone writes
`config.json`, `metrics.jsonl`, `summary.json` and talks to wandb; all
processes save and restore checkpoints together.

Never lose a run: checkpoints every `checkpoint_every_steps`, on SIGTERM
(preemption; hosts agree on the step) and at the end; a rerun resumes the
parameters, optimizer state, EMA, batch-norm statistics, step, RNG and the
input position, and so ends bit-identical to an uninterrupted run on CPU. A
non-finite loss or gradient stops the run naming the step; the last good
checkpoint stays.

The loop knows nothing of what is trained: the task (`mnv2_jax.tasks`, chosen by
`config.task`) supplies the model, the input pipeline, the loss and the evaluator.
Compiled steps are kept in JAX's persistent compilation cache, so a rerun or the
next run of a sweep with the same shapes does not compile again.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mnv2_jax import allocator, tasks
from mnv2_jax import config as config_lib
from mnv2_jax import progress as console
from mnv2_jax import workdir as workdir_lib
from mnv2_jax.train import checkpoint, optim
from mnv2_jax.train import state as state_lib
from mnv2_jax.train import step as step_lib
from mnv2_jax.train import writer as writer_lib

COMPLETE_KEY = workdir_lib.COMPLETE_KEY


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN/Inf; the last good checkpoint is kept."""


class Preempted(SystemExit):
    """SIGTERM arrived; a checkpoint was written and the run can be resumed."""


def enable_compilation_cache(path: str | None = None) -> None:
    """Persistent XLA compilation cache: repeated shapes in a sweep compile once."""
    path = path or os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.expanduser("~/.cache/mnv2_jax/jax")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


DISTRIBUTED_ENV = "MNV2_DISTRIBUTED"  # "1": call jax.distributed.initialize() (cluster auto-detection)


def maybe_initialize_distributed() -> None:
    """`jax.distributed.initialize` when launched as one process of several.

    Explicitly, from `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` (any
    machines, CPU collectives over gloo); or by JAX's cluster auto-detection on a Cloud TPU slice
    (`MNV2_DISTRIBUTED=1`, which `mnv2 sweep launch` sets), Slurm or Kubernetes. It also starts
    JAX's preemption notice service, through which every process learns of a SIGTERM that one of
    them received.
    """
    if distributed_initialized():
        return
    env = os.environ
    explicit = all(k in env for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))
    detect = env.get(DISTRIBUTED_ENV) == "1" or any(
        k in env for k in ("TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS")
    )
    if explicit:
        # Only the CPU backend needs this; other backends bring their own collectives.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
        )
    elif detect:
        try:
            jax.distributed.initialize()
        except (RuntimeError, ValueError) as e:  # already initialised, or a single-host TPU VM
            print(f"jax.distributed.initialize skipped: {e}", file=sys.stderr)


def distributed_initialized() -> bool:
    from jax._src import distributed as jax_distributed  # no public "is initialised" query

    return jax_distributed.global_state.client is not None


def data_mesh() -> jax.sharding.Mesh:
    """One 'data' axis over every device; sharding propagates automatically (Auto axes)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def provenance() -> dict:
    def git(*args: str) -> str | None:
        try:
            here = os.path.dirname(os.path.abspath(__file__))
            return (
                subprocess.run(
                    ["git", *args], cwd=here, capture_output=True, text=True, timeout=5
                ).stdout.strip()
                or None
            )
        except (OSError, subprocess.SubprocessError):
            return None

    from importlib import metadata

    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets", "mnv2_jax"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    commit = git("rev-parse", "HEAD")
    return {
        # Launched copies of the code are no git checkouts: the launcher passes the commit along.
        "git_commit": commit or os.environ.get("MNV2_GIT_COMMIT"),
        "git_dirty": bool(git("status", "--porcelain")) if commit else False,
        "command": sys.argv,
        "versions": versions,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def resolve_config(config: ml_collections.ConfigDict, num_classes: int) -> ml_collections.ConfigDict:
    """Fill what defaults to None from the dataset and the recipe, so config.json says what ran."""
    resolved = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
    resolved.num_classes = num_classes
    for key, value in optim.resolve_optim(config).items():
        resolved.optim[key] = value
    return resolved


def _comparable(cfg: dict) -> dict:
    flat = config_lib.flatten(cfg)
    # `provenance` is a dict, so flattening turns it into `provenance.time`, `provenance.command`, ...:
    # compare top-level names, or every resume would be refused for a different time stamp.
    return {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in flat.items()
        if k.split(".")[0] not in (*config_lib.RESUMABLE_KEYS, "provenance")
    }


def check_workdir(workdir: str, resolved: ml_collections.ConfigDict, overwrite: bool) -> None:
    """Refuse to resume a workdir that holds a different config (unless --overwrite)."""
    found = workdir_lib.read_config(workdir)
    if found is None:
        return
    stored = _comparable(found)
    current = _comparable(json.loads(resolved.to_json()))
    differing = sorted(k for k in stored.keys() | current.keys() if stored.get(k) != current.get(k))
    if differing and not overwrite:
        lines = [f"  {k}: workdir has {stored.get(k)!r}, command has {current.get(k)!r}" for k in differing]
        raise ValueError(
            f"{workdir} holds a run with a different config; resuming may change only "
            f"{', '.join(config_lib.RESUMABLE_KEYS)}. Differing keys:\n" + "\n".join(lines) + "\n"
            "Use a new --workdir, or --overwrite to resume with the new config anyway."
        )


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    if config.total_steps is not None:
        return int(config.total_steps)
    return max(1, math.ceil(config.total_epochs * steps_per_epoch))


def bn_groups(config: ml_collections.ConfigDict) -> int:
    """How many independent batch-norm groups the global batch splits into."""
    if config.bn_group_size is None:
        return 1
    return config.batch_size // config.bn_group_size


def _global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def evaluate(task, eval_step, variables, sharding: NamedSharding, show: bool = False) -> dict:
    """The task's eval metrics over every example of the eval split (exactly once).

    `show`: a bar over the eval batches on a terminal when they take more than a few seconds."""
    evaluator = task.evaluator()
    batches = task.eval_iterator()
    if show and console.interactive():
        examples = task.dataset_info().num_eval_examples
        batch = task.config.eval_batch_size or task.config.batch_size
        batches = console.track(
            batches, "eval", total=-(-examples // batch) if examples else None, unit="batch"
        )
    for local in batches:
        evaluator.add(eval_step(variables, _global_batch(local, sharding)))
    return evaluator.result()


def make_eval_step(task, model, replicated: NamedSharding, batch_sharding: NamedSharding):
    """The task's eval contribution of one batch, jitted over the mesh."""
    return jax.jit(
        lambda variables, batch: task.eval_outputs(model, variables, batch),
        in_shardings=(replicated, batch_sharding),
        out_shardings=replicated,
    )


def _load_init_from(path: str, state: state_lib.TrainState) -> state_lib.TrainState:
    """Start from another run's (or imported) weights: arrays of matching name and shape are copied."""
    import jax.numpy as jnp
    from flax.traverse_util import flatten_dict, unflatten_dict

    variables = checkpoint.load_variables(path, ema=True)
    out = {}
    for collection in ("params", "batch_stats"):
        target = flatten_dict(getattr(state, collection))
        source = flatten_dict(variables[collection])
        skipped = []
        for key, value in target.items():
            if key in source and source[key].shape == value.shape:
                target[key] = jnp.asarray(source[key], value.dtype)
            else:
                skipped.append("/".join(key))
        if skipped:
            print(f"init_from {path}: {collection} not copied (absent or other shape): {', '.join(skipped)}")
        out[collection] = unflatten_dict(target)
    # The average starts as its own copy: the train step donates the state, and one buffer
    # cannot be donated twice.
    return state.replace(
        params=out["params"],
        batch_stats=out["batch_stats"],
        ema_params=jax.tree.map(jnp.copy, out["params"]),
        ema_batch_stats=jax.tree.map(jnp.copy, out["batch_stats"]),
    )


def compile_train_step(train_step, state, batch, progress: writer_lib.Progress) -> Any:
    """Compile the train step for these shapes (from the persistent cache when it has them),
    announcing it and saying how long it took and, on CPU, whether it fits in host memory."""
    with progress.compiling("the train step"):
        compiled = train_step.lower(state, batch).compile()
    warning = allocator.host_memory_warning(compiled, "train_step", int(batch["image"].shape[0]))
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return compiled


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, overwrite: bool = False, profile: bool = False
) -> dict:
    """Train (or resume) the run in `workdir`; returns the summary."""
    config_lib.validate_config(config)
    maybe_initialize_distributed()
    config_lib.validate_batch_sizes(config, jax.device_count(), jax.process_count())
    # A workdir this process cannot write is refused now, not at the first checkpoint.
    workdir_lib.ensure_writable(workdir, "--workdir", tag=f"-{jax.process_index()}")
    enable_compilation_cache()
    is_main = jax.process_index() == 0

    info = tasks.get_task(config).dataset_info()
    num_classes = config.num_classes or info.num_classes
    resolved = resolve_config(config, num_classes)
    task = tasks.get_task(resolved)
    steps_per_epoch = max(1, info.num_train_examples // config.batch_size)
    n_steps = total_steps(config, steps_per_epoch)
    eval_every = config.eval_every_steps or steps_per_epoch

    check_workdir(workdir, resolved, overwrite)
    counts = task.count(num_classes)
    if is_main:
        stored = json.loads(resolved.to_json())
        stored["provenance"] = provenance()
        workdir_lib.write_config(workdir, stored)

    # Model, optimizer, state, sharded over one 'data' axis of every device.
    mesh = data_mesh()
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    groups = bn_groups(config)
    if groups > 1 and groups % jax.device_count() and jax.device_count() % groups:
        raise ValueError(
            f"config key 'bn_group_size': {groups} groups do not tile {jax.device_count()} devices; "
            "choose a group size that makes the group count a multiple or divisor of the device count"
        )
    model = task.model(num_classes)
    tx = optim.create_optimizer(config, steps_per_epoch, decay_rule=task.weight_decay_rule)
    opt = optim.resolve_optim(config)
    state = jax.jit(
        lambda: state_lib.create_train_state(
            model, tx, config.resolution, config.seed, metric_names=task.train_metrics
        ),
        out_shardings=replicated,
        compiler_options=step_lib.init_compiler_options(),
    )()

    checkpointer = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
    restored = checkpointer.restore(state)
    if restored is not None:
        state = jax.device_put(restored, replicated)
    elif config.init_from:
        state = jax.device_put(_load_init_from(config.init_from, state), replicated)
    start_step = int(state.step)
    if is_main:
        workdir_lib.truncate_metrics(workdir, start_step)

    summary_values = {
        **counts,
        "task": task.name,
        "width": config.width,
        "resolution": config.resolution,
        "expansion": config.expansion,
        "bottleneck_activation": config.bottleneck_activation,
        "residual": config.residual,
        "dataset": config.dataset,
        "seed": config.seed,
        "recipe": config.recipe,
        "total_steps": n_steps,
    }
    wandb_config = {**json.loads(resolved.to_json()), **{k: summary_values[k] for k in ("madds", "params")}}
    writer = writer_lib.MetricWriter(workdir, wandb_config, config.wandb, enabled=is_main)
    progress = writer_lib.Progress(n_steps, enabled=is_main and config.progress)

    train_step = jax.jit(
        step_lib.make_train_step(model, tx, loss_fn=task.loss, ema_decay=opt["ema_decay"], bn_groups=groups),
        in_shardings=(replicated, batch_sharding),
        out_shardings=replicated,
        donate_argnums=(0,),
    )
    reset = jax.jit(state_lib.reset_metric_sums, out_shardings=replicated, donate_argnums=0)
    eval_step = make_eval_step(task, model, replicated, batch_sharding)

    # SIGTERM (preemption): checkpoint at the next step and exit 143. Under jax.distributed, JAX's
    # preemption notice service has its own SIGTERM handler and tells every process, which then
    # agree on the step to stop at (`reached_preemption`); a Python handler here would replace
    # that one and leave the other hosts training. Alone, a Python handler sets a flag.
    sigterm = {"received": False}
    distributed = distributed_initialized()
    previous_handler = None
    if not distributed:
        previous_handler = signal.signal(signal.SIGTERM, lambda *_: sigterm.update(received=True))
    evals: dict[int, dict] = {}  # this invocation's eval values by step

    def run_eval(step: int) -> dict:
        t0 = time.time()
        values = {}
        for prefix, ema in (("eval", False), ("eval_ema", True)):
            if ema and not opt["ema_decay"]:
                continue
            result = evaluate(
                task, eval_step, state_lib.eval_variables(state, ema), batch_sharding, show=progress.enabled
            )
            values.update({f"{prefix}/{k}": v for k, v in result.items() if k != "examples"})
        values["eval/time_sec"] = time.time() - t0
        shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items() if "time" not in k)
        progress.say(f"eval at step {step}: {shown}")
        evals[step] = values
        return values

    pending: list[tuple[int, Any]] = []  # (step, finite flag) not yet checked

    def check_finite() -> None:
        if not pending:
            return
        flags = jax.device_get([f for _, f in pending])
        for (s, _), ok in zip(pending, flags):
            if not bool(ok):
                pending.clear()
                raise NonFiniteError(
                    f"non-finite loss or gradient at step {s}; training stopped. The last good checkpoint "
                    f"(step {checkpointer.latest_step()}) is kept in {checkpointer.directory}."
                )
        pending.clear()

    train_iter = task.train_iterator(start_step)
    if start_step and is_main:
        console.say(f"resuming {workdir} at step {start_step}/{n_steps}")
    last_log_time, last_log_step = time.time(), start_step
    step = start_step
    profiling = False
    try:
        while step < n_steps:
            if profile and step == start_step + 2 and not profiling:
                jax.profiler.start_trace(str(workdir_lib.path(workdir, "profile")))
                profiling = True
            batch = _global_batch(next(train_iter), batch_sharding)
            if step == start_step:  # compile once, on the first batch's shapes
                train_step = compile_train_step(train_step, state, batch, progress)
                last_log_time = time.time()  # rates and the ETA leave the compile out
                progress.start(step)
            state, step_metrics = train_step(state, batch)
            step += 1
            progress.advance(step)
            pending.append((step, step_metrics["finite"]))
            if profiling and step == start_step + 7:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
                profiling = False
                if is_main:
                    print(f"profile written to {workdir_lib.path(workdir, 'profile')}", flush=True)

            last = step == n_steps
            if step % config.log_every_steps == 0 or last:
                check_finite()
                sums = jax.device_get(state.metric_sums)
                state = reset(state)
                train_values = {
                    f"train/{k}": float(v / sums["steps"]) for k, v in sums.items() if k != "steps"
                }
                now = time.time()
                steps_per_sec = (step - last_log_step) / max(now - last_log_time, 1e-9)
                record = {
                    **train_values,
                    "lr": float(jax.device_get(step_metrics["lr"])),
                    "train/images_per_sec": steps_per_sec * config.batch_size,
                    "train/step_time_sec": 1.0 / steps_per_sec,
                    "epoch": step / steps_per_epoch,
                }
                if step % eval_every == 0 or last:
                    record.update(run_eval(step))
                writer.write(step, record)
                progress(step, record["train/loss"], record["train/images_per_sec"], steps_per_sec)
                last_log_time, last_log_step = time.time(), step
            elif step % eval_every == 0:
                check_finite()
                writer.write(step, run_eval(step))
                last_log_time = time.time()

            preempted = checkpointer.reached_preemption(step) if distributed else sigterm["received"]
            if step % config.checkpoint_every_steps == 0 or last or preempted:
                check_finite()
                checkpointer.save(step, state, force=True)
            if preempted:
                checkpointer.wait()
                who = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
                print(
                    f"{who}SIGTERM: checkpoint at step {step} written; rerun the command to resume",
                    flush=True,
                )
                raise Preempted(143)
        checkpointer.wait()
        if start_step >= n_steps and is_main:
            console.say(f"{workdir}: already complete at step {start_step}")
        final = _final_eval(workdir, run_eval, step, evals)
        summary = {**summary_values, **final, "step": step, COMPLETE_KEY: True}
        writer.summary(summary)
        return summary
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        progress.close()
        checkpointer.wait()
        checkpointer.close()
        writer.close()


def _final_eval(workdir: str, run_eval, step: int, evals: dict[int, dict]) -> dict:
    """The eval values at the last step: from this invocation (the loop evaluates at the last
    step), else from the metrics file of the invocation that finished the run. Every process
    decides alike: only process 0 writes the file, so the others must not race it for the
    values it is writing now (a process that evaluated alone would wait for the others forever).
    """
    if step in evals:
        return evals[step]
    for record in reversed(workdir_lib.read_metrics(workdir)):
        if record.get("step") == step and any(k.startswith("eval/") and "time" not in k for k in record):
            return {k: v for k, v in record.items() if k.startswith("eval")}
    return run_eval(step)
