"""Traced steps kept on disk, so that a second process skips tracing.

XLA's persistent compilation cache saves the compile, but each new process
still traces and lowers the step in Python first: 2.1-2.6 s of the 3.2-3.6 s
that a 1.0/224 batch-32 train step took to get ready in a second process on
the 2-core CPU machine (1.3-1.5 s with this cache). `cached_jit` exports the traced step once with `jax.export`, writes
the serialized module next to XLA's cache, and later processes load it
instead of tracing. Then the compile itself is a hit in XLA's cache.

An entry is found by a key over everything the traced program depends on:
the caller's key (the run's config and anything else the step closes over),
the source of this package, the versions of jax, jaxlib, flax and optax,
the backend and its devices, the JAX settings that change tracing, and the
arguments' tree structure, shapes, dtypes and shardings. Editing any of them
makes a new entry. A miss and a hit both compile the exported module, so
they run the same program. `MNV2_EXPORT_CACHE=0` turns the cache off (plain
`jax.jit`); so does having no persistent compilation cache.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
from jax import export

from mnv2_jax import allocator

_PACKAGE_DIR = Path(__file__).resolve().parent
_SUFFIX = ".jax_exported"
# JAX settings that change what a trace produces.
_TRACE_SETTINGS = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_default_prng_impl",
    "jax_threefry_partitionable",
    "jax_numpy_dtype_promotion",
    "jax_numpy_rank_promotion",
)


def default_cache_dir() -> str | None:
    """`<JAX compilation cache>/mnv2_exported`, or None when the cache is off."""
    if os.environ.get("MNV2_EXPORT_CACHE", "1") == "0":
        return None
    base = jax.config.jax_compilation_cache_dir
    if not base or "://" in base:  # only local directories
        return None
    return os.path.join(base, "mnv2_exported")


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


class _Entry:
    def __init__(self, compiled: Callable, out_tree: Any, source: str) -> None:
        self.compiled = compiled
        self.out_tree = out_tree
        self.source = source  # 'disk', 'exported' or 'jit'


class CachedFunction:
    """Like `jax.jit(fn, in_shardings=..., out_shardings=..., donate_argnums=...)`
    for positional pytree arguments, with the traced program cached on disk
    (see the module docstring).

    `key` must name everything `fn` closes over that changes its program (for
    the train step: the config, the class count, the steps per epoch).
    `in_shardings` has one sharding (or None) per positional argument and
    `out_sharding` one for every output. `cache_dir=True` uses
    `default_cache_dir()`; None or False is plain `jax.jit`.
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
    ) -> None:
        self.fn = fn
        self.name = name
        self.key = dict(key)
        self.in_shardings = in_shardings
        self.out_sharding = out_sharding
        self.donate_argnums = tuple(donate_argnums)
        self.cache_dir = default_cache_dir() if cache_dir is True else (cache_dir or None)
        self.log = log or (lambda _: None)
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
        where its program came from: 'disk' (loaded), 'exported' (traced now and
        written) or 'jit' (no cache)."""
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
            "devices": [len(devices), devices[0].device_kind, jax.process_count()],
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
        if self.cache_dir is None:
            return self._plain(leaves, in_tree, jit_kwargs, start)
        path = Path(self.cache_dir) / f"{self.name}-{self._digest(in_tree, leaves, flat_in)}{_SUFFIX}"
        exported, out_tree, source = self._load(path)
        if exported is None:
            try:
                exported, out_tree = self._export(leaves, in_tree, jit_kwargs)
            except Exception as e:  # noqa: BLE001 -- anything export cannot handle: trace as usual
                self.log(f"{self.name}: not exported ({type(e).__name__}: {e}); compiling it with jax.jit")
                return self._plain(leaves, in_tree, jit_kwargs, start)
            self._store(path, exported, out_tree)
            source = "exported"
        try:
            compiled = self._compile(jax.jit(exported.call, **jit_kwargs).lower(*leaves))
        except Exception as e:  # noqa: BLE001 -- never fail a run on the cache: trace as usual
            self.log(f"{self.name}: cannot use {path.name} ({type(e).__name__}: {e}); compiling with jax.jit")
            return self._plain(leaves, in_tree, jit_kwargs, start)
        self.log(f"{self.name} ready in {time.perf_counter() - start:.1f} s (program {source}: {path.name})")
        self.last_source = source
        return _Entry(compiled, out_tree, source)

    def _plain(self, leaves: list, in_tree: Any, jit_kwargs: dict, start: float) -> _Entry:
        box: dict[str, Any] = {}
        compiled = self._compile(jax.jit(self._flat_fn(in_tree, box), **jit_kwargs).lower(*leaves))
        self.log(f"{self.name} ready in {time.perf_counter() - start:.1f} s (jax.jit)")
        self.last_source = "jit"
        return _Entry(compiled, box["out_tree"], "jit")

    def _compile(self, lowered: jax.stages.Lowered) -> jax.stages.Compiled:
        """Compile; on CPU, warn when the step will not fit in host memory
        (`allocator.too_big_for_host`) and say what would."""
        compiled = lowered.compile()
        if allocator.too_big_for_host(compiled):
            need = allocator.step_heap_bytes(compiled) or 0
            self.log(
                f"{self.name}: WARNING: needs about {need / 2**30:.1f} GiB of host memory, more than "
                f"{allocator.FIT_FRACTION:.0%} of the {(allocator.available_host_bytes() or 0) / 2**30:.1f} GiB "
                f"available; the process may be killed for memory. A smaller batch size fits."
            )
        return compiled

    def _flat_fn(self, in_tree: Any, box: dict) -> Callable:
        def flat(*flat_args):
            out_leaves, box["out_tree"] = jax.tree.flatten(self.fn(*jax.tree.unflatten(in_tree, flat_args)))
            return out_leaves

        return flat

    def _export(self, leaves: list, in_tree: Any, jit_kwargs: dict) -> tuple[export.Exported, Any]:
        box: dict[str, Any] = {}
        given = jit_kwargs["in_shardings"] is not None  # else each argument's own placement
        abstract = [
            jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=None if given else getattr(x, "sharding", None))
            for x in leaves
        ]
        exported = export.export(jax.jit(self._flat_fn(in_tree, box), **jit_kwargs))(*abstract)
        return exported, box["out_tree"]

    def _load(self, path: Path) -> tuple[export.Exported | None, Any, str]:
        if not path.exists():
            return None, None, ""
        try:
            with open(path, "rb") as f:
                stored = pickle.load(f)
            return export.deserialize(bytearray(stored["exported"])), stored["out_tree"], "disk"
        except Exception as e:  # noqa: BLE001 -- a damaged entry is traced again and rewritten
            self.log(f"{self.name}: ignoring unreadable {path} ({type(e).__name__}: {e})")
            return None, None, ""

    def _store(self, path: Path, exported: export.Exported, out_tree: Any) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            payload = {"exported": bytes(exported.serialize()), "out_tree": out_tree, "key": self.key}
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
                pickle.dump(payload, f)
            os.replace(f.name, path)  # atomic: concurrent runs never see half a file
        except Exception as e:  # noqa: BLE001 -- a cache that cannot be written only costs time
            self.log(f"{self.name}: could not write {path} ({type(e).__name__}: {e})")


cached_jit = CachedFunction  # the name its callers read: a jit with a disk cache
