"""The process set-up for a device (rdd_plugins/runtime.py)."""

import os
import platform
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from rdd_plugins.errors import RddError
from rdd_plugins.runtime import (Numerics, device_clock, fix_cublas_workspace, prepare_device, prepare_runtime,
                                 scoped_numerics)

# Allocates and frees a 256 MiB tensor after prepare_device("cpu"), then prints how much of it the
# process still holds: kept for reuse when malloc keeps freed memory, returned to the OS otherwise.
PROBE = """
import torch
from rdd_plugins.runtime import keep_freed_memory, prepare_device

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

prepare_device("cpu")
before = rss_mib()
x = torch.ones(64 * 2**20)  # 256 MiB, every page touched
del x
print(keep_freed_memory(), round(rss_mib() - before))
"""


def probe(env_extra: dict) -> tuple[str, int]:
    env = {**os.environ, "LD_PRELOAD": "", **env_extra}  # a malloc preloaded around us is left alone
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    applied, held = out.stdout.split()
    return applied, int(held)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not os.path.exists("/proc/self/status"),
                    reason="malloc tuning applies to glibc on Linux")
def test_cpu_runs_keep_freed_memory_unless_the_environment_opts_out():
    applied, held = probe({"RDD_SYSTEM_MALLOC": "0"})
    assert applied == "True" and held >= 200, held
    applied, held = probe({"RDD_SYSTEM_MALLOC": "1"})
    assert applied == "False" and held < 50, held


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc tuning applies to glibc")
def test_only_an_explicit_yes_opts_out_and_a_preloaded_malloc_is_left_alone():
    assert probe({"RDD_SYSTEM_MALLOC": "false"})[0] == "True"
    assert probe({"RDD_SYSTEM_MALLOC": "yes"})[0] == "False"
    # the loader warns that it cannot preload the missing library and goes on without it
    assert probe({"RDD_SYSTEM_MALLOC": "", "LD_PRELOAD": "libjemalloc-missing.so"})[0] == "False"


def test_prepare_device_resolves_as_the_config_says():
    assert prepare_device("cpu") == torch.device("cpu")
    assert prepare_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RddError, match="CUDA is not available"):
            prepare_device("cuda")


# -- deterministic mode, TF32 and timers (issue #18) ----------------------------------------------


@pytest.fixture
def numerics(monkeypatch):
    """torch's process-wide numerics and CUBLAS_WORKSPACE_CONFIG, put back after the test."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = Numerics.current()
    yield before
    before.restore()


def settings(deterministic="auto", tf32="auto", device="cpu"):
    return SimpleNamespace(device=device, deterministic=deterministic, tf32=tf32)


def test_auto_is_deterministic_fp32_for_distillation_and_fast_for_evaluation(numerics):
    runtime = prepare_runtime(settings(), "distillation")
    assert runtime.record() == {"deterministic": True, "tf32": False}
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"

    runtime = prepare_runtime(settings(), "evaluation")
    assert runtime.record() == {"deterministic": False, "tf32": True}
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_explicit_switches_win_over_auto(numerics):
    runtime = prepare_runtime(settings(deterministic=False, tf32=True), "distillation")
    assert runtime.record() == {"deterministic": False, "tf32": True}
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.allow_tf32
    runtime = prepare_runtime(settings(deterministic=True, tf32=False), "evaluation")
    assert runtime.record() == {"deterministic": True, "tf32": False}
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cuda.matmul.allow_tf32
    with pytest.raises(ValueError, match="purpose"):
        prepare_runtime(settings(), "training")


def test_a_scoped_run_puts_the_process_numerics_back_however_it_ends(numerics):
    @scoped_numerics
    def run(fail: bool):
        prepare_runtime(settings(deterministic=True, tf32=False), "distillation")
        assert torch.are_deterministic_algorithms_enabled()
        if fail:
            raise KeyboardInterrupt
        return "done"

    assert run(False) == "done" and Numerics.current() == numerics
    with pytest.raises(KeyboardInterrupt):
        run(True)
    assert Numerics.current() == numerics


def test_a_deterministic_cublas_workspace_is_kept_and_a_late_one_is_warned_about(numerics, monkeypatch, capsys):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    fix_cublas_workspace()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")  # not one cuBLAS reduces deterministically with
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    fix_cublas_workspace()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA was initialised" in err and "CUBLAS_WORKSPACE_CONFIG=:4096:8" in err


def test_the_device_clock_waits_for_cuda_work_and_is_a_plain_clock_on_cpu(monkeypatch):
    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    before = device_clock(torch.device("cpu"))
    assert waited == []
    after = device_clock(torch.device("cuda"))  # no CUDA needed: only synchronize touches it
    device_clock(torch.device("cuda:1"))
    assert waited == [torch.device("cuda"), torch.device("cuda:1")] and after >= before
