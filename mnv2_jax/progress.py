"""What long work shows on the console while it runs: what is happening, how far, how long left.

Progress is for the person watching; it never goes into a run's files (`metrics.jsonl` holds
the measurements). Two forms, chosen by where the output goes:

* a terminal (stderr is a TTY): a live `tqdm` bar -- count, rate, elapsed, time left -- with the
  log lines printed above it (`say`);
* anything else (a log file, a notebook cell reading a subprocess, CI): no bar, only the log
  lines, each of which carries its own count and time left where it has one, so that a
  `train.log` reads as a plain history.

Durations are written H:MM:SS past an hour and never wrap at 24 hours (27.8 h is 27:48:00).
Depends on tqdm alone, so the train loop, the sweep runner and the data builders can all use it.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """`MM:SS` under an hour, `H:MM:SS` above (hours keep counting past 24); '?' if unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    return tqdm.format_interval(seconds)


def interactive() -> bool:
    """Whether a live bar can be drawn: stderr is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def say(message: str) -> None:
    """Print one line to stdout, above any live bar (without tearing it)."""
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def bar(
    total: int | None,
    desc: str,
    *,
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
    leave: bool = True,
    delay: float = 0.0,
) -> tqdm:
    """A live bar on stderr, or a disabled one (every call a no-op) when `enabled` is False or
    stderr is not a terminal. Its rate and time left count only what happens after it is
    created, so create it once the slow first step (compiling) is done. With `delay` it
    appears only once the work has taken that many seconds (quick work shows nothing)."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        disable=not (enabled and interactive()),
        leave=leave,
        delay=delay,
        dynamic_ncols=True,
        file=sys.stderr,
    )


def track(
    items: Iterable[T],
    desc: str,
    *,
    total: int | None = None,
    unit: str = "it",
    enabled: bool = True,
    delay: float = 2.0,
) -> Iterator[T]:
    """`items`, with a transient bar while they are consumed if that takes over `delay` seconds
    (see `bar`)."""
    with bar(total, desc, unit=unit, enabled=enabled, leave=False, delay=delay) as shown:
        for item in items:
            yield item
            shown.update(1)


@contextlib.contextmanager
def phase(what: str, *, enabled: bool = True, log: Callable[[str], None] = say) -> Iterator[dict[str, Any]]:
    """Announce slow work before it starts and say how long it took once it is done:

        compiling the train step ...
        compiling the train step: done in 41.2 s

    Yields a dict; a `note` set in it is added to the closing line. On an error the closing
    line says it failed after how long, and the error propagates.
    """
    info: dict[str, Any] = {}
    if enabled:
        log(f"{what} ...")
    start = time.perf_counter()
    try:
        yield info
    except BaseException:
        if enabled:
            log(f"{what}: failed after {time.perf_counter() - start:.1f} s")
        raise
    if enabled:
        note = f" ({info['note']})" if info.get("note") else ""
        log(f"{what}: done in {time.perf_counter() - start:.1f} s{note}")


class RateClock:
    """Items per second and time left, measured from a start that the caller chooses.

    `start(done)` (re)starts the clock at `done` items -- after the compile, so that the first
    rate and time left are those of steady work; `update(done)` returns (rate, seconds left)
    over everything since the start, or (nan, nan) before any item. `now` is the time source
    (seconds).
    """

    def __init__(self, total: int, now: Callable[[], float] = time.perf_counter) -> None:
        self.total = total
        self.now = now
        self._t0: float | None = None
        self._n0 = 0

    @property
    def started(self) -> bool:
        return self._t0 is not None

    def start(self, done: int) -> None:
        self._t0, self._n0 = self.now(), done

    def update(self, done: int) -> tuple[float, float]:
        if self._t0 is None or done <= self._n0:
            return math.nan, math.nan
        rate = (done - self._n0) / max(self.now() - self._t0, 1e-9)
        return rate, (self.total - done) / rate
