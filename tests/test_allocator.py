"""The host allocator: which environment each MNV2_ALLOCATOR choice sets, and that the
compute commands really re-execute under it (and only once)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from mnv2_jax import allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the allocator switch is Linux-only"
)


@linux_only
def test_auto_prefers_jemalloc_and_keeps_freed_memory():
    env = allocator.allocator_env("auto", {}, "/x/libjemalloc.so.2")
    assert env["LD_PRELOAD"] == "/x/libjemalloc.so.2"
    conf = dict(item.split(":") for item in env["MALLOC_CONF"].split(","))
    assert conf["dirty_decay_ms"] == "-1" and conf["muzzy_decay_ms"] == "-1"
    assert conf["thp"] == "always"


@linux_only
def test_auto_without_jemalloc_uses_glibc_huge_pages_and_keeps_other_tunables():
    assert allocator.allocator_env("auto", {}, None) == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    env = allocator.allocator_env(
        "glibc-thp", {"GLIBC_TUNABLES": "glibc.cpu.x86_shstk=off"}, "/x/libjemalloc.so.2"
    )
    assert env == {"GLIBC_TUNABLES": "glibc.cpu.x86_shstk=off:glibc.malloc.hugetlb=1"}
    assert allocator.allocator_env("auto", {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=2"}, None) == {}


@linux_only
@pytest.mark.parametrize("environ", [{"LD_PRELOAD": "/my/tcmalloc.so"}, {"MALLOC_CONF": "narenas:1"}])
def test_a_users_own_allocator_settings_win(environ):
    assert allocator.allocator_env("auto", environ, "/x/libjemalloc.so.2") == {}


def test_system_changes_nothing():
    assert allocator.allocator_env("system", {}, "/x/libjemalloc.so.2") == {}


@linux_only
def test_errors_name_the_variable_and_the_fix():
    with pytest.raises(ValueError, match=r"MNV2_ALLOCATOR.*\('auto', 'jemalloc', 'glibc-thp', 'system'\)"):
        allocator.allocator_env("tcmalloc", {}, None)
    with pytest.raises(ValueError, match="apt-get install libjemalloc2"):
        allocator.allocator_env("jemalloc", {}, None)


def test_describe():
    assert allocator.describe({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == "jemalloc"
    assert allocator.describe({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) == "glibc-thp"
    assert allocator.describe({}) == "system"


def _bench(choice: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MNV2_ALLOCATOR", "GLIBC_TUNABLES"))}
    env["MNV2_ALLOCATOR"] = choice
    argv = [sys.executable, "-m", "mnv2_jax", "bench", "--width", "0.35", "--resolution", "32"]
    argv += ["--batch-size", "2", "--num-classes", "10", "--modes", "infer", "--steps", "1", "--repeats", "1"]
    return subprocess.run([*argv, "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@linux_only
@pytest.mark.parametrize("choice, expected", [("glibc-thp", "glibc-thp"), ("system", "system")])
def test_compute_commands_run_under_the_chosen_allocator(choice, expected):
    proc = _bench(choice)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["allocator"] == expected
    assert result["infer_images_per_sec"] > 0
    from importlib.metadata import version

    assert result["versions"]["jax"] == version("jax") and result["versions"]["jaxlib"] == version("jaxlib")


def test_a_bad_choice_stops_the_command_with_the_allowed_values():
    proc = _bench("fast")
    assert proc.returncode == 2
    assert "MNV2_ALLOCATOR" in proc.stderr and "jemalloc" in proc.stderr


def test_main_called_from_python_never_replaces_the_process(monkeypatch, capsys):
    from mnv2_jax import cli

    def fail(*args):
        raise AssertionError("os.execve called from cli.main([...])")

    monkeypatch.setattr(os, "execve", fail)
    monkeypatch.delenv("MNV2_ALLOCATOR_APPLIED", raising=False)
    monkeypatch.setenv("MNV2_ALLOCATOR", "glibc-thp")
    with pytest.raises(SystemExit):
        cli.main(["bench", "--width", "0.35", "--resolution", "-1"])


def test_the_heap_a_step_needs_counts_a_second_step_of_temporaries_under_jemalloc():
    from types import SimpleNamespace

    analysis = SimpleNamespace(argument_size_in_bytes=100, output_size_in_bytes=50, temp_size_in_bytes=1000)
    compiled = SimpleNamespace(memory_analysis=lambda: analysis)
    assert allocator.step_heap_bytes(compiled, {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == 2150
    assert allocator.step_heap_bytes(compiled, {}) == 1150
    assert allocator.step_heap_bytes(SimpleNamespace(memory_analysis=lambda: None), {}) is None
    assert allocator.too_big_for_host(compiled, available=10**9) is False
    assert allocator.too_big_for_host(compiled, available=1000) is True


def test_a_step_too_big_for_host_memory_names_a_batch_size_estimated_to_fit():
    from types import SimpleNamespace

    gib = 2**30
    # 1 GiB of state in and out, 8 GiB of temporaries at batch 256 (16 GiB under jemalloc).
    analysis = SimpleNamespace(
        argument_size_in_bytes=gib // 2, output_size_in_bytes=gib // 2, temp_size_in_bytes=8 * gib
    )
    compiled = SimpleNamespace(memory_analysis=lambda: analysis)
    system, jemalloc = {}, {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}
    # 6 GiB available, 5.4 GiB usable: batch 128 needs 1 + 4 = 5 GiB under glibc, 1 + 8 under jemalloc.
    assert allocator.fitting_batch(compiled, 256, available=6 * gib, environ=system) == (128, 5 * gib)
    assert allocator.fitting_batch(compiled, 256, available=6 * gib, environ=jemalloc) == (64, 5 * gib)
    assert allocator.fitting_batch(compiled, 256, available=gib, environ=system) is None  # state alone: 1 GiB
    assert allocator.fitting_batch(SimpleNamespace(memory_analysis=lambda: None), 256, available=gib) is None
    # The warning names it (64 or 128: whether this process runs under jemalloc) ...
    warning = allocator.host_memory_warning(compiled, "train_step", batch_size=256, available=6 * gib)
    assert re.search(
        r"^train_step: WARNING: needs about (9|17)\.0 GiB .* batch_size=(128|64) should fit", warning
    )
    # ... says so when nothing would fit, and says nothing when the step fits.
    assert "Not even batch size 1" in allocator.host_memory_warning(
        compiled, "s", batch_size=256, available=gib
    )
    assert allocator.host_memory_warning(compiled, "s", batch_size=256, available=64 * gib) is None
