"""Compiled steps kept on disk, so that a second process neither traces nor compiles them.

XLA's persistent compilation cache saves the compile, but a new process still
traces and lowers the step in Python before it can even look the program up
(2.1-2.6 s for a 1.0/224 train step on the 2-core CPU machine). `cached_jit`
compiles the step once with `jax.jit`, writes the executable
(`jax.experimental.serialize_executable`) next to XLA's cache, and later
processes load it. On a miss XLA's own cache is neither read nor written: the
file holds the one copy, and an executable that XLA had loaded from its cache
cannot be serialised again (`_compile_bypassing_xla_cache`).

Against session 8's version of this module, which kept the traced program
(`jax.export`) and so exported, re-lowered and looked it up in XLA's cache in
every process, `mnv2 bench --width 1.0 --resolution 224 --modes train` in five
alternating pairs of fresh processes measured (median, seconds): cold compile
at batch 32 10.9 against 11.8, loading 0.71 against 0.89; at batch 128 see
the README.

An entry is found by a key over everything the executable depends on: the
caller's key (the run's config and anything else the step closes over), the
source of this package, the versions of jax, jaxlib, flax and optax, the
backend, its devices and platform version, the CPU's model and instruction-set
flags (an executable built for one CPU may not run on another), `XLA_FLAGS`
and `LIBTPU_INIT_ARGS`, the JAX settings that change tracing, and the
arguments' tree structure, shapes, dtypes, shardings and donation. Editing any
of them makes a new entry, so keys that do not change the program must be
left out of the caller's key (`train._NOT_READ_BY_STEPS`).

`MNV2_STEP_CACHE=0` turns the cache off (plain `jax.jit` with XLA's cache);
so does having no persistent compilation cache or turning it off
(`JAX_ENABLE_COMPILATION_CACHE=false`), and so does running on several hosts
(there every process compiles, and XLA's cache serves the next run).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import pickle
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
from jax.experimental import serialize_executable
from jax.experimental.compilation_cache import compilation_cache

from mnv2_jax import allocator

_PACKAGE_DIR = Path(__file__).resolve().parent
_SUFFIX = ".xla_step"
# JAX settings that change what a trace produces.
_TRACE_SETTINGS = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_default_prng_impl",
    "jax_threefry_partitionable",
    "jax_numpy_dtype_promotion",
    "jax_numpy_rank_promotion",
)
# Environment variables that change what XLA compiles.
_COMPILER_ENV = ("XLA_FLAGS", "LIBTPU_INIT_ARGS")


def default_cache_dir() -> str | None:
    """`<JAX compilation cache>/mnv2_steps`, or None when the cache is off
    (`MNV2_STEP_CACHE=0`, no JAX cache directory, or JAX's cache disabled)."""
    if os.environ.get("MNV2_STEP_CACHE", "1") == "0" or not jax.config.jax_enable_compilation_cache:
        return None
    base = jax.config.jax_compilation_cache_dir
    if not base or "://" in base:  # only local directories
        return None
    return os.path.join(base, "mnv2_steps")


@functools.cache
def _source_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.rglob("*.py")):
        digest.update(str(path.relative_to(_PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in ("jax", "jaxlib", "flax", "optax"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "none"
    return out


@functools.cache
def _cpu_features() -> str:
    """The host CPU's model and instruction-set flags (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        return hashlib.sha256("".join(sorted(set(lines))).encode()).hexdigest()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _sharding_text(sharding: Any) -> str:
    if sharding is None:
        return "none"
    mesh = getattr(sharding, "mesh", None)
    spec = getattr(sharding, "spec", None)
    if mesh is not None:
        return f"{type(sharding).__name__}({dict(mesh.shape)}, {spec})"
    return repr(sharding)


def _flat_shardings(shardings: Sequence[Any] | None, args: tuple, leaves_per_arg: list[int]) -> tuple | None:
    """One sharding per leaf from one sharding (or None) per positional argument."""
    if shardings is None:
        return None
    if len(shardings) != len(args):
        raise ValueError(f"in_shardings has {len(shardings)} entries for {len(args)} arguments")
    return tuple(s for s, n in zip(shardings, leaves_per_arg) for _ in range(n))


_XLA_CACHE_HIT = "/jax/compilation_cache/cache_hits"


def _compile_bypassing_xla_cache(lowered: jax.stages.Lowered) -> tuple[jax.stages.Compiled, bool]:
    """Compile with XLA's persistent cache off: (executable, whether XLA really compiled it).

    The step's own file will hold the executable, so XLA's cache need not keep a
    second copy; and an executable that XLA *loaded* from its cache cannot be
    serialised again (the copy fails at run time with "Function ... not found"),
    so it must not come from there. Should XLA report a cache hit all the same,
    the second value is False and the caller keeps nothing.
    """
    hits: list[str] = []

    def listen(event: str, **_: Any) -> None:
        if event == _XLA_CACHE_HIT:
            hits.append(event)

    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()  # JAX decides whether to use its cache once; decide again
    jax.monitoring.register_event_listener(listen)
    try:
        compiled = lowered.compile()
    finally:
        jax.monitoring.unregister_event_listener(listen)
        jax.config.update("jax_enable_compilation_cache", enabled)
        compilation_cache.reset_cache()
    return compiled, not hits


class _Entry:
    def __init__(self, compiled: Callable, out_tree: Any, source: str) -> None:
        self.compiled = compiled
        self.out_tree = out_tree
        self.source = source  # 'disk', 'compiled' or 'jit'


class CachedFunction:
    """Like `jax.jit(fn, in_shardings=..., out_shardings=..., donate_argnums=...)`
    for positional pytree arguments, with the compiled executable cached on disk
    (see the module docstring).

    `key` must name everything `fn` closes over that changes its program (for
    the train step: the config, the class count, the steps per epoch).
    `in_shardings` has one sharding (or None) per positional argument and
    `out_sharding` one for every output. `cache_dir=True` uses
    `default_cache_dir()`; None or False is plain `jax.jit`. `batch_size` (the global batch
    the step is compiled for) lets a step too big for host memory name a batch size that fits;
    `quiet` leaves out the "ready in" line, for a caller that announces the compile itself.
    """

    def __init__(
        self,
        fn: Callable,
        *,
        name: str,
        key: Mapping[str, Any],
        in_shardings: Sequence[Any] | None = None,
        out_sharding: Any = None,
        donate_argnums: Sequence[int] = (),
        cache_dir: str | None | bool = True,
        log: Callable[[str], None] | None = None,
        batch_size: int | None = None,
        quiet: bool = False,
    ) -> None:
        self.fn = fn
        self.name = name
        self.key = dict(key)
        self.in_shardings = in_shardings
        self.out_sharding = out_sharding
        self.donate_argnums = tuple(donate_argnums)
        self.cache_dir = default_cache_dir() if cache_dir is True else (cache_dir or None)
        self.log = log or (lambda _: None)
        self.batch_size = batch_size  # the global batch it is compiled for: names one that fits memory
        self.quiet = quiet  # no "ready in" line (the caller announces the compile); warnings still
        self._entries: dict[Any, _Entry] = {}
        self._last: tuple[Any, _Entry] | None = None  # (input tree, its entry) of the last call
        self.last_source: str | None = None

    def __call__(self, *args: Any) -> Any:
        leaves, in_tree = jax.tree.flatten(args)
        last = self._last
        if last is not None and last[0] == in_tree:
            # The common case, a loop calling with the same structure: the executable
            # checks the shapes itself (a Python signature of ~500 leaves costs 0.15 ms).
            try:
                return jax.tree.unflatten(last[1].out_tree, last[1].compiled(*leaves))
            except TypeError as e:
                if "Argument types differ" not in str(e):
                    raise
        signature = (in_tree, *((x.shape, x.dtype) for x in leaves))
        entry = self._entries.get(signature)
        if entry is None:
            entry = self._entries[signature] = self._prepare(args, leaves, in_tree)
        self._last = (in_tree, entry)
        return jax.tree.unflatten(entry.out_tree, entry.compiled(*leaves))

    def compile(self, *args: Any) -> str:
        """Get the step ready for these arguments without running it; returns
        where its executable came from: 'disk' (loaded), 'compiled' (compiled now
        and written) or 'jit' (compiled, not kept: no cache, or not serialisable)."""
        leaves, in_tree = jax.tree.flatten(args)
        signature = (in_tree, *((x.shape, x.dtype) for x in leaves))
        entry = self._entries[signature] = self._prepare(args, leaves, in_tree)
        self._last = (in_tree, entry)
        return entry.source

    # -- internals ---------------------------------------------------------------

    def _flat_layout(self, args: tuple, leaves: list) -> tuple[tuple | None, tuple[int, ...]]:
        leaves_per_arg = [len(jax.tree.leaves(a)) for a in args]
        starts = [sum(leaves_per_arg[:i]) for i in range(len(args))]
        donate = tuple(
            j for i in self.donate_argnums for j in range(starts[i], starts[i] + leaves_per_arg[i])
        )
        return _flat_shardings(self.in_shardings, args, leaves_per_arg), donate

    def _digest(self, in_tree: Any, leaves: list, flat_in: tuple | None) -> str:
        devices = jax.devices()
        parts = {
            "name": self.name,
            "key": self.key,
            "source": _source_digest(),
            "versions": _versions(),
            "backend": jax.default_backend(),
            "platform_version": getattr(devices[0].client, "platform_version", ""),
            "devices": [len(devices), devices[0].device_kind, jax.process_count()],
            "cpu": _cpu_features(),
            "compiler_env": {k: os.environ.get(k, "") for k in _COMPILER_ENV},
            "settings": {k: str(getattr(jax.config, k, None)) for k in _TRACE_SETTINGS},
            "tree": str(in_tree),
            "avals": [
                (
                    tuple(x.shape),
                    str(x.dtype),
                    None if flat_in else _sharding_text(getattr(x, "sharding", None)),
                )
                for x in leaves
            ],
            "in_shardings": [_sharding_text(s) for s in flat_in] if flat_in else None,
            "out_sharding": _sharding_text(self.out_sharding),
            "donate": self.donate_argnums,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def _prepare(self, args: tuple, leaves: list, in_tree: Any) -> _Entry:
        flat_in, donate = self._flat_layout(args, leaves)
        jit_kwargs = dict(in_shardings=flat_in, out_shardings=self.out_sharding, donate_argnums=donate)
        start = time.perf_counter()
        if self.cache_dir is None or jax.process_count() > 1:
            entry = self._jit(leaves, in_tree, jit_kwargs, start)
        else:
            digest = self._digest(in_tree, leaves, flat_in)
            path = Path(self.cache_dir) / f"{self.name}-{digest}{_SUFFIX}"
            entry = self._load(path, digest, leaves)
            if entry is None:
                entry = self._jit(leaves, in_tree, jit_kwargs, start, keep_at=(path, digest))
            else:
                self._check_fits(entry.compiled)
                if not self.quiet:
                    self.log(f"{self.name} ready in {time.perf_counter() - start:.1f} s (loaded {path.name})")
        self.last_source = entry.source
        return entry

    def _jit(
        self,
        leaves: list,
        in_tree: Any,
        jit_kwargs: dict,
        start: float,
        keep_at: tuple[Path, str] | None = None,
    ) -> _Entry:
        """Trace, lower and compile with `jax.jit`; with `keep_at` (path, digest), write
        the executable there instead of into XLA's persistent cache."""
        box: dict[str, Any] = {}
        lowered = jax.jit(self._flat_fn(in_tree, box), **jit_kwargs).lower(*leaves)
        fresh = False  # whether XLA really compiled it (only asked when it is to be kept)
        if keep_at is None:
            compiled = lowered.compile()
        else:
            compiled, fresh = _compile_bypassing_xla_cache(lowered)
        self._check_fits(compiled)
        source = "jit"
        if keep_at is not None:
            if not fresh:
                self.log(
                    f"{self.name}: came from XLA's compilation cache, which cannot be re-serialised; not kept"
                )
            elif self._store(*keep_at, compiled, box["out_tree"]):
                source = "compiled"
        if not self.quiet:
            self.log(f"{self.name} ready in {time.perf_counter() - start:.1f} s ({source})")
        return _Entry(compiled, box["out_tree"], source)

    def _check_fits(self, compiled: Any) -> None:
        """On CPU, warn when the step will not fit in host memory and name a batch size that
        would (`allocator.host_memory_warning`)."""
        warning = allocator.host_memory_warning(compiled, self.name, self.batch_size)
        if warning:
            self.log(warning)

    def _flat_fn(self, in_tree: Any, box: dict) -> Callable:
        def flat(*flat_args):
            out_leaves, box["out_tree"] = jax.tree.flatten(self.fn(*jax.tree.unflatten(in_tree, flat_args)))
            return out_leaves

        return flat

    def _load(self, path: Path, digest: str, leaves: list) -> _Entry | None:
        if not path.exists():
            return None
        try:
            with open(path, "rb") as f:
                stored = pickle.load(f)
            if stored.get("digest") != digest:
                raise ValueError(f"written for key {stored.get('digest')!r}, not {digest!r}")
            by_id = {d.id: d for d in jax.devices()}
            compiled = serialize_executable.deserialize_and_load(
                stored["executable"],
                stored["in_tree"],
                stored["flat_out_tree"],
                execution_devices=[by_id[i] for i in stored["device_ids"]],
            )
            expected = [(tuple(x.shape), x.dtype) for x in leaves]
            if [(tuple(a.shape), a.dtype) for a in jax.tree.leaves(compiled.in_avals)] != expected:
                raise ValueError("its inputs differ from these arguments")
        except Exception as e:  # noqa: BLE001 -- a damaged or foreign entry is compiled again and rewritten
            self.log(f"{self.name}: cannot use {path.name} ({type(e).__name__}: {e}); compiling it again")
            return None
        return _Entry(compiled, stored["out_tree"], "disk")

    def _store(self, path: Path, digest: str, compiled: Any, out_tree: Any) -> bool:
        temporary = None
        try:
            executable, in_tree, flat_out_tree = serialize_executable.serialize(compiled)
            payload = {
                "digest": digest,
                "executable": executable,
                "in_tree": in_tree,
                "flat_out_tree": flat_out_tree,
                # the devices it runs on, in order (by default it would be loaded onto all of them)
                "device_ids": [d.id for d in compiled.runtime_executable().local_devices()],
                "out_tree": out_tree,
                "key": self.key,
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
                temporary = f.name
                pickle.dump(payload, f)
            os.replace(temporary, path)  # atomic: concurrent runs never see half a file
            return True
        except Exception as e:  # noqa: BLE001 -- a step that cannot be kept only costs time next run
            self.log(f"{self.name}: not kept on disk ({type(e).__name__}: {e})")
            if temporary is not None and os.path.exists(temporary):
                os.unlink(temporary)
            return False


cached_jit = CachedFunction  # the name its callers read: a jit with a disk cache
