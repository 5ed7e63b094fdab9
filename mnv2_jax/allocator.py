"""The host memory allocator that CPU training runs with.

XLA's CPU runtime allocates every step's temporaries and outputs afresh (a
MobileNetV2 train step at 1.0/224, batch 32, asks for several GB). glibc's
malloc serves requests that large from worker threads with mmap and returns
them with munmap, so every step faults in and zeroes all of that memory again:
measured here (2 cores), 1.18 million page faults per step and about a third
of the step's CPU time in the kernel.

jemalloc with transparent huge pages and no decay keeps freed memory mapped
and hands it back to the next step (0 page faults per step measured); where
jemalloc is not installed, glibc's `hugetlb` tunable at least makes the faults
2 MiB instead of 4 KiB. Both must be in the environment when the process
starts, so the `mnv2` compute commands re-execute themselves once with it set
(`maybe_reexec`). Choose with MNV2_ALLOCATOR:

- `auto` (default): jemalloc if found (Debian/Ubuntu: `apt-get install
  libjemalloc2`), else glibc with huge pages;
- `jemalloc`: jemalloc, or an error naming how to install it;
- `glibc-thp`: glibc with huge pages;
- `system`: leave the environment alone.

An LD_PRELOAD or MALLOC_CONF already set by the user is left as it is.

Measured here (1.0/224, batch 32, train step): steady steps take 1.2 s under
jemalloc; once per process, usually in the first steps, the heap grows by one
more step's worth (about 5 GB at this size) and that step takes several
seconds longer while the kernel finds huge pages.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Mapping

ALLOCATORS = ("auto", "jemalloc", "glibc-thp", "system")
ENV_VAR = "MNV2_ALLOCATOR"
_APPLIED_VAR = "MNV2_ALLOCATOR_APPLIED"
# Keep freed memory (no decay, no separate arena for big blocks) on huge pages.
JEMALLOC_CONF = "thp:always,metadata_thp:auto,oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1"
GLIBC_TUNABLE = "glibc.malloc.hugetlb=1"
_JEMALLOC_GLOBS = (
    "/usr/lib/*-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)


def find_jemalloc() -> str | None:
    """Path of an installed libjemalloc.so.2, or None."""
    for pattern in _JEMALLOC_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def allocator_env(choice: str, environ: Mapping[str, str], jemalloc: str | None) -> dict[str, str]:
    """The variables to add to `environ` for `choice` (empty: nothing to change)."""
    if choice not in ALLOCATORS:
        raise ValueError(f"{ENV_VAR}: must be one of {ALLOCATORS}, got {choice!r}")
    if choice == "system" or not sys.platform.startswith("linux"):
        return {}
    if "LD_PRELOAD" in environ or "MALLOC_CONF" in environ:
        return {}  # the user chose an allocator already
    if choice in ("auto", "jemalloc") and jemalloc:
        return {"LD_PRELOAD": jemalloc, "MALLOC_CONF": JEMALLOC_CONF}
    if choice == "jemalloc":
        raise ValueError(
            f"{ENV_VAR}=jemalloc: libjemalloc.so.2 not found "
            "(Debian/Ubuntu: apt-get install libjemalloc2; or set MNV2_ALLOCATOR=auto)"
        )
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return {}
    return {"GLIBC_TUNABLES": f"{tunables}:{GLIBC_TUNABLE}" if tunables else GLIBC_TUNABLE}


def describe(environ: Mapping[str, str] | None = None) -> str:
    """What this process runs with: 'jemalloc', 'glibc-thp' or 'system'."""
    environ = os.environ if environ is None else environ
    if "jemalloc" in environ.get("LD_PRELOAD", ""):
        return "jemalloc"
    if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
        return "glibc-thp"
    return "system"


def maybe_reexec(argv: list[str]) -> None:
    """Re-execute `python -m mnv2_jax ARGV` with the allocator's environment, once.

    Returns without doing anything when there is nothing to change (or it was
    done already); otherwise does not return.
    """
    if os.environ.get(_APPLIED_VAR):
        return
    extra = allocator_env(os.environ.get(ENV_VAR, "auto"), os.environ, find_jemalloc())
    if not extra:
        return
    env = {**os.environ, **extra, _APPLIED_VAR: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "mnv2_jax", *argv], env)


# -- fitting a step into host memory --------------------------------------------
#
# Under jemalloc (no decay) the process holds about one more step's worth of
# heap once it has grown: a step's temporaries are allocated before the previous
# step's are handed back, and jemalloc keeps both (peak RSS 10.4-10.8 GiB
# against 5.9 GiB at 1.0/224 batch 32 in most runs, when that step needed 4.48
# GiB of temporaries; one allocator arena did not prevent it). So a CPU step
# that will not fit gets a warning naming a batch size that would (`host_memory_warning`).
#
# XLA's memory-minimising scheduler (XLA_FLAGS=
# --xla_cpu_enable_concurrency_optimized_scheduler=false, read only at process
# start) used to halve the temporaries; since the depthwise kernel gradient runs
# in chunks (`layers.depthwise_kernel_grad`) it saves about 1% (2.46 -> 2.43 GiB
# at 1.0/224 batch 32, 9.78 -> 9.70 GiB at batch 128), so it is not suggested.
#
# The heap a CPU step needs: its arguments and outputs plus this many times its
# temporaries (jemalloc keeps a second step's worth; glibc returns it).
HEAP_FACTOR = {"jemalloc": 2.0}
FIT_FRACTION = 0.9  # of the memory available when the step is compiled


def available_host_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def step_heap_bytes(compiled: object, environ: Mapping[str, str] | None = None) -> int | None:
    """Host heap one CPU execution of `compiled` (a `jax.stages.Compiled`) needs
    under this process's allocator; None when XLA gives no memory analysis."""
    parts = _heap_parts(compiled, environ)
    return None if parts is None else int(sum(parts))


def too_big_for_host(compiled: object, available: int | None = None) -> bool:
    """Whether a compiled CPU step needs more than FIT_FRACTION of the host
    memory available (unknown: False)."""
    import jax

    if jax.default_backend() != "cpu":
        return False
    available = available_host_bytes() if available is None else available
    need = step_heap_bytes(compiled)
    return available is not None and need is not None and need > FIT_FRACTION * available


def _heap_parts(compiled: object, environ: Mapping[str, str] | None = None) -> tuple[float, float] | None:
    """(fixed bytes, bytes that scale with the batch) of `step_heap_bytes`, or None.

    The temporaries (activations and their gradients) are taken to scale with the batch and the
    arguments and outputs (the train state, plus the batch itself) not to: at a smaller batch
    this overstates the fixed part by the input images, a small error on the safe side.
    """
    try:
        analysis = compiled.memory_analysis()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 -- not every backend/version has it
        return None
    if analysis is None:
        return None
    factor = HEAP_FACTOR.get(describe(environ), 1.0)
    fixed = analysis.argument_size_in_bytes + analysis.output_size_in_bytes
    return float(fixed), float(factor * analysis.temp_size_in_bytes)


def fitting_batch(
    compiled: object, batch_size: int, available: int | None = None, environ: Mapping[str, str] | None = None
) -> tuple[int, int] | None:
    """The largest of batch_size / 2, / 4, ... whose estimated heap fits in FIT_FRACTION of the
    available host memory, with that estimate in bytes: `(batch, bytes)`; None when not even a
    batch of 1 would fit or nothing is known. `compiled` is the step compiled at `batch_size`.
    """
    parts = _heap_parts(compiled, environ)
    available = available_host_bytes() if available is None else available
    if parts is None or available is None or batch_size < 1:
        return None
    fixed, scaled = parts
    batch = batch_size
    while batch > 1:
        batch //= 2
        need = fixed + scaled * batch / batch_size
        if need <= FIT_FRACTION * available:
            return batch, int(need)
    return None


def host_memory_warning(
    compiled: object, name: str, batch_size: int | None = None, available: int | None = None
) -> str | None:
    """On CPU, a warning when the step `compiled` (named `name`, compiled for a global batch of
    `batch_size`) will not fit in host memory, naming a batch size that is estimated to fit;
    None when it fits or nothing is known."""
    available = available_host_bytes() if available is None else available
    if not too_big_for_host(compiled, available):
        return None
    need = step_heap_bytes(compiled) or 0
    message = (
        f"{name}: WARNING: needs about {need / 2**30:.1f} GiB of host memory, more than "
        f"{FIT_FRACTION:.0%} of the {(available or 0) / 2**30:.1f} GiB available; the process may be "
        "killed for memory."
    )
    if batch_size is None:
        return message + " A smaller batch size needs less."
    fits = fitting_batch(compiled, batch_size, available)
    if fits is None:
        return (
            message + f" Not even batch size 1 is estimated to fit (this step has batch size {batch_size})."
        )
    batch, estimate = fits
    return message + (
        f" batch_size={batch} should fit (about {estimate / 2**30:.1f} GiB, scaling this step's "
        f"temporaries from batch size {batch_size})."
    )
