"""Files on a local disk or in a bucket (gs://) through one path type, `etils.epath` (orbax's too).

Everything that reads or writes run folders, sweep roots and plots goes through here, so a
`--workdir gs://BUCKET/PATH` works wherever a local one does. What differs between the two:

* atomic replacement: locally a temporary file renamed over the target; on GCS a single upload,
  which replaces an object whole (readers see the old or the new one), so no rename is needed;
* appending: a local file grows in place; a GCS object cannot be appended to, so writers that
  append (metrics.jsonl) rewrite the object instead (`MetricWriter`);
* directories: local ones are created; on GCS they exist as soon as an object is under them.

Paths are passed around as strings (`str(epath.Path("gs://b/x"))` is `"gs://b/x"`). With
TensorFlow installed, epath reaches GCS through TensorFlow's file system unless
`EPATH_USE_TF=false` (then gcsfs, which honours STORAGE_EMULATOR_HOST).
"""

from __future__ import annotations

import functools
import os
import uuid
from typing import Any


@functools.cache
def _fresh_listings() -> None:
    """gcsfs keeps directory listings for the life of a process by default; a run folder in a
    bucket changes under its readers (another process writes checkpoints and metrics), so a
    cached listing would hide the latest checkpoint. Listings are always asked anew."""
    import fsspec.config

    for protocol in ("gs", "gcs"):
        fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


def path(p: Any):
    """`p` as an `etils.epath.Path` (imported here: the CLI loads this module without it)."""
    from etils import epath

    _fresh_listings()
    return epath.Path(p)


def is_remote(p: Any) -> bool:
    """A URL (gs://, s3://...) rather than a local path."""
    return "://" in os.fspath(p)


def join(base: Any, *names: str) -> str:
    """`base/name/...` as a string; local paths stay as given (relative ones too)."""
    return str(path(base).joinpath(*names))


def exists(p: Any) -> bool:
    return path(p).exists()


def is_dir(p: Any) -> bool:
    return path(p).is_dir()


def listdir(p: Any) -> list[str]:
    """The names in a directory (on GCS: under a prefix), sorted."""
    return sorted(child.name for child in path(p).iterdir())


def read_text(p: Any) -> str | None:
    """The file's text, or None when there is no such file."""
    try:
        return path(p).read_text()
    except FileNotFoundError:
        return None


def makedirs(p: Any) -> None:
    path(p).mkdir(parents=True, exist_ok=True)


def write_bytes(p: Any, data: bytes) -> None:
    """Replace the file at `p` with `data`, atomically: a reader sees the old file or the new one."""
    if is_remote(p):
        path(p).write_bytes(data)  # one upload: GCS replaces the object whole
        return
    directory = os.path.dirname(os.path.abspath(p))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(p)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(p: Any, text: str) -> None:
    write_bytes(p, text.encode())


def remove(p: Any) -> None:
    path(p).unlink(missing_ok=True)


def ensure_writable(directory: str, what: str = "--workdir", tag: str = "") -> None:
    """Create `directory` if needed and write and delete a small file there; a ValueError naming
    `what` and the path when that fails (a missing bucket, no permission, a file in the way)."""
    probe = join(directory, f".write-test{tag}-{uuid.uuid4().hex[:8]}")
    try:
        makedirs(directory)
        write_text(probe, "mnv2_jax write test\n")
        remove(probe)
    except Exception as e:  # noqa: BLE001 - whatever the storage says, name the path and stop
        raise ValueError(f"{what} {directory}: cannot write there ({type(e).__name__}: {e})") from None
