"""Quiet by default (`mnv2_jax.quiet`): TensorFlow's C++ start-up banners are dropped from file
descriptor 2, everything else written there comes through in order, and MNV2_VERBOSE=1 shows all."""

from __future__ import annotations

import os
import subprocess
import sys

from mnv2_jax import quiet

# Lines as TensorFlow 2.21 and the TFLite interpreter write them.
BANNER_LINES = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1796596366.837141    4763 port.cc:153] oneDNN custom operations are on. You may see "
    b"slightly different numerical results due to floating-point round-off errors from different "
    b"computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n",
    b"I0000 00:00:1796596366.893161    4763 cpu_feature_guard.cc:227] This TensorFlow binary is optimized "
    b"to use available CPU instructions in performance-critical operations.\n",
    b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow "
    b"with the appropriate compiler flags.\n",
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n",
)


def test_banners_written_to_fd2_are_dropped_and_the_rest_kept_in_order(capfd, monkeypatch):
    monkeypatch.delenv(quiet.ENV_VAR, raising=False)
    with quiet.quiet_stderr():
        os.write(2, BANNER_LINES[0] + b"E0000 something real failed\n" + b"".join(BANNER_LINES[1:]))
        os.write(2, b"W0000 00:00:1.0  1 other.cc:1] a C++ warning\n")
    assert capfd.readouterr().err == (
        "E0000 something real failed\nW0000 00:00:1.0  1 other.cc:1] a C++ warning\n"
    )


def test_verbose_keeps_everything(capfd, monkeypatch):
    monkeypatch.setenv(quiet.ENV_VAR, "1")
    with quiet.quiet_stderr():
        os.write(2, b"".join(BANNER_LINES))
    assert capfd.readouterr().err.encode() == b"".join(BANNER_LINES)


def test_importing_tensorflow_prints_nothing():
    """A real TensorFlow import, in a fresh process, leaves stdout and stderr empty but for the
    number of banner lines it dropped, which must be some (else this test proves nothing)."""
    code = (
        "from mnv2_jax import quiet\n"
        "dropped = []\n"
        "is_banner = quiet.is_banner\n"
        "quiet.is_banner = lambda line: is_banner(line) and not dropped.append(line)\n"
        "quiet.import_tensorflow()\n"
        "print(len(dropped))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in (quiet.ENV_VAR, "TF_CPP_MIN_LOG_LEVEL")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert int(proc.stdout) > 0
