"""The process set-up for a device (rdd_plugins/runtime.py)."""

import os
import platform
import subprocess
import sys

import pytest
import torch

from rdd_plugins.errors import RddError
from rdd_plugins.runtime import prepare_device

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
