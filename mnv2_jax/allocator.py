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
# step's are handed back, and jemalloc keeps both (one allocator arena does not
# prevent it). So a CPU step that will not fit gets a warning naming a smaller
# batch (`too_big_for_host`).
#
# XLA's memory-minimising scheduler (XLA_FLAGS=
# --xla_cpu_enable_concurrency_optimized_scheduler=false, read only at process
# start) is not suggested: with the depthwise kernel gradient in chunks
# (`layers.depthwise_kernel_grad`) it saves about 1% of the temporaries.
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
    try:
        analysis = compiled.memory_analysis()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 -- not every backend/version has it
        return None
    if analysis is None:
        return None
    factor = HEAP_FACTOR.get(describe(environ), 1.0)
    return int(
        analysis.argument_size_in_bytes + analysis.output_size_in_bytes + factor * analysis.temp_size_in_bytes
    )


def too_big_for_host(compiled: object, available: int | None = None) -> bool:
    """Whether a compiled CPU step needs more than FIT_FRACTION of the host
    memory available (unknown: False)."""
    import jax

    if jax.default_backend() != "cpu":
        return False
    available = available_host_bytes() if available is None else available
    need = step_heap_bytes(compiled)
    return available is not None and need is not None and need > FIT_FRACTION * available
