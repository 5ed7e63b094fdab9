"""Quiet by default: the start-up banners of TensorFlow's C++ libraries are hidden unless asked for.

Importing TensorFlow prints, from C++ and straight to file descriptor 2, absl's "All log
messages before absl::InitializeLog() is called are written to STDERR", oneDNN's "custom
operations are on" and a CPU-instructions notice -- the first two twice, as two of its shared
libraries each log them when they load (one process, no restart involved).
TF_CPP_MIN_LOG_LEVEL does not reach them: they are written before TensorFlow reads it. The
TFLite interpreter likewise announces its XNNPACK delegate. None of it is actionable.

`quiet_stderr()` holds file descriptor 2 in a temporary file while such a block runs, then
writes back every line that is not one of those banners (so real errors and warnings still
show, in order). `import_tensorflow()` imports TensorFlow under it. MNV2_VERBOSE=1 (which the
command line's `--verbose` sets, so that restarted and child processes see it too) turns the
filtering off.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

ENV_VAR = "MNV2_VERBOSE"

# One pattern per banner line (C++ log lines start with severity, date, time, thread id, file:line]).
BANNERS = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IW]\d{4} [\d:.]+\s+\d+ (port|cpu_feature_guard)\.cc:\d+\] .*"
    rb"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\."
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.)\r?$"
)


def verbose() -> bool:
    """Whether MNV2_VERBOSE asks for everything (any value but '', '0', 'false', 'no')."""
    return os.environ.get(ENV_VAR, "").strip().lower() not in ("", "0", "false", "no")


def is_banner(line: bytes) -> bool:
    return BANNERS.match(line.rstrip(b"\n")) is not None


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Drop the known banners that C++ code writes to file descriptor 2 inside the block.

    Everything else written to fd 2 meanwhile (by Python or C++, any thread) is written back
    when the block ends, in order. Does nothing when `verbose()`.
    """
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as held:
            os.dup2(held.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                held.seek(0)
                kept = memoryview(b"".join(line for line in held if not is_banner(line)))
                while kept:
                    kept = kept[os.write(2, kept) :]
    finally:
        os.close(saved)


def import_tensorflow() -> ModuleType:
    """`import tensorflow`, without its start-up banners (unless `verbose()`)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with quiet_stderr():
        import tensorflow

    return tensorflow
