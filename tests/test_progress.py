"""Console progress: durations past a day, rates measured after the compile, the compile lines."""

from __future__ import annotations

import math

import pytest

from mnv2_jax import progress
from mnv2_jax.train import writer


class FakeClock:
    """A time source that moves only when told to."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_durations_keep_counting_hours_past_a_day():
    assert progress.format_duration(27.8 * 3600) == "27:48:00"
    assert progress.format_duration(3 * 3600 + 46 * 60 + 30) == "3:46:30"
    assert progress.format_duration(65) == "01:05"
    assert progress.format_duration(math.nan) == "?" and progress.format_duration(-1) == "?"


def test_rate_and_time_left_count_from_the_start_the_caller_chooses():
    clock = FakeClock()
    rate = progress.RateClock(total=1000, now=clock)
    assert not rate.started and all(math.isnan(v) for v in rate.update(5))
    clock.t += 600.0  # a ten-minute compile before the clock starts: it must not count
    rate.start(0)
    assert all(math.isnan(v) for v in rate.update(0))
    clock.t += 10.0
    steps_per_sec, left = rate.update(100)
    assert steps_per_sec == pytest.approx(10.0) and left == pytest.approx(90.0)


def test_training_progress_line_shows_a_time_left_past_a_day(capsys):
    shown = writer.Progress(total_steps=100_001)
    clock = FakeClock()
    shown.clock = progress.RateClock(100_001, now=clock)
    shown.start(0)
    clock.t += 1.0  # one step per second: 100,000 steps = 27 h 46 min 40 s left
    shown(1, loss=2.5, images_per_sec=128.0, steps_per_sec=1.0)
    line = capsys.readouterr().out.strip()
    assert line.endswith("ETA 27:46:40"), line
    assert line.startswith("step       1/100001  loss 2.5000") and "128.0 img/s" in line
    shown.close()


def test_disabled_progress_prints_nothing(capsys):
    shown = writer.Progress(total_steps=10, enabled=False)
    with shown.compiling():
        pass
    shown.start(0)
    shown(5, loss=1.0, images_per_sec=1.0, steps_per_sec=1.0)
    shown.say("eval at step 5")
    shown.close()
    assert capsys.readouterr().out == ""


def test_a_phase_says_what_it_does_and_how_long_it_took():
    lines: list[str] = []
    with progress.phase("compiling the train step", log=lines.append) as info:
        info["note"] = "kept in the step cache"
    assert lines[0] == "compiling the train step ..."
    assert lines[1].startswith("compiling the train step: done in ") and lines[1].endswith(
        " s (kept in the step cache)"
    )
    lines.clear()
    with pytest.raises(RuntimeError), progress.phase("building mnist_offline", log=lines.append):
        raise RuntimeError("out of disk")
    assert lines[1].startswith("building mnist_offline: failed after ")


def test_no_live_bar_where_output_is_not_a_terminal():
    # pytest captures stderr: as in a log file or a notebook reading a subprocess, no bar is drawn
    # and every update is a no-op; the log lines carry the progress instead.
    assert not progress.interactive()
    with progress.bar(10, "train") as shown:
        assert shown.disable
    assert list(progress.track(range(3), "eval", total=3)) == [0, 1, 2]


def test_on_a_terminal_a_bar_is_drawn_and_lines_print_above_it(monkeypatch, capsys):
    monkeypatch.setattr(progress, "interactive", lambda: True)
    shown = writer.Progress(total_steps=20)
    shown.start(0)
    for step in range(1, 11):
        shown.advance(step)
    shown(10, loss=0.5, images_per_sec=64.0, steps_per_sec=2.0)
    shown.close()
    assert list(progress.track(range(3), "eval", total=3, delay=0.0)) == [0, 1, 2]
    captured = capsys.readouterr()
    assert "step      10/20  loss 0.5000" in captured.out  # the line, on stdout
    assert "train:  50%" in captured.err and "10/20" in captured.err  # the bar, on stderr
    assert "eval:" in captured.err  # a transient bar: drawn, then cleared
