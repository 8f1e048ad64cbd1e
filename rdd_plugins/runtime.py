"""Process set-up for the device a run uses: resolve it, and on a CPU keep freed memory for reuse.

Why the CPU part: glibc's malloc serves every allocation above its mmap threshold (at most 32 MiB)
with a fresh ``mmap`` and gives it back with ``munmap`` on free. PyTorch's CPU allocator has no
cache, so each large activation (DC's width-128 ConvNet on a real batch of 256 allocates 128 MiB
tensors) is mapped anew and its pages are faulted in and zeroed by the kernel on first touch, every
step: in DC's setting on 2 cores, 40 % of a gradient-matching step's CPU time was spent in the
kernel, and steps ran 1.9-2.5x faster without it (``python benchmarks/bench_distill.py --setting dc
--dc-repo PATH`` shows DC's own code both ways). Turning mmap off for malloc and trimming the heap
only when 2 GiB lie free at its top makes freed blocks reusable, as PyTorch's CUDA caching allocator
does on a GPU: identical numbers, a higher resident peak (the heap keeps its high-water mark: +60 %
for `gm` in DC's setting). It governs glibc's main arena, which serves the thread that runs the step
(PyTorch's CPU autograd runs on the calling thread); other threads' arenas still map requests of
64 MiB and more afresh.

The setting is process-wide and stays for the life of the process, also when the library is used
from Python (``rdd_plugins.distill``, ``evaluate``, ``benchmark``). Set ``RDD_SYSTEM_MALLOC=1`` in
the environment to leave malloc as it is (e.g. when several processes share a machine's memory).
Other C libraries than glibc, and a malloc preloaded in its place (jemalloc, tcmalloc, ... in
``LD_PRELOAD``), are left as they are.

A run also sets torch's process-wide numerics for what it does (:func:`prepare_runtime`):

- ``deterministic``: deterministic algorithms (cuDNN's included, no cuDNN benchmarking, a fixed
  cuBLAS workspace). "auto" turns it on for distillation, whose resume must continue the run
  exactly, and off for evaluation, which averages seeds and wants speed.
- ``tf32``: TF32 matmuls and convolutions on Ampere and later GPUs. "auto" forbids them for
  distillation, where matching gradients, cure's second derivatives and curvature's finite
  difference are differences of nearly equal numbers, and allows them for evaluation training.

A run sets both, on and off alike, for as long as it lasts: ``scoped_numerics`` puts back what the
process had, so a run's settings never carry into the next one or into the caller's own code. On a
CPU neither changes what is computed.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys
import time
from dataclasses import dataclass

import torch

from .errors import RddError

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied: bool | None = None  # None: not tried yet in this process


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed large blocks instead of unmapping them; True when in effect.

    Process-wide and idempotent; it changes how memory is obtained, never what is computed.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    opted_out = os.environ.get("RDD_SYSTEM_MALLOC", "").strip().lower() in ("1", "true", "yes", "on")
    if opted_out or platform.libc_ver()[0] != "glibc" \
            or "malloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success. The trim threshold is an int: the largest one returns heap to
    # the OS only when 2 GiB lie free at its top. Without it, turning mmap off would make the heap
    # shrink and regrow, faulting the same pages in again.
    _applied = bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)) and bool(libc.mallopt(_M_MMAP_MAX, 0))
    return _applied


def resolve_device(name: str) -> torch.device:
    """A config's ``device`` ("auto", "cpu", "cuda", "cuda:N") as a torch device that exists here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RddError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if name.startswith("cuda:"):
        from .distributed.world import current_world

        if current_world().distributed:  # every rank would put its tensors on that one GPU
            raise RddError(f"device {name!r}: under torchrun each rank takes GPU LOCAL_RANK; use --device cuda")
    return torch.device(name)


def prepare_device(name: str) -> torch.device:
    """``resolve_device(name)``, with the process set up for it (see the module docstring)."""
    device = resolve_device(name)
    if device.type == "cpu":
        keep_freed_memory()
    return device


# What "auto" resolves to, per purpose (see the module docstring for why).
AUTO_SETTINGS = {
    "distillation": {"deterministic": True, "tf32": False},
    "evaluation": {"deterministic": False, "tf32": True},
}
# The two workspace sizes with which cuBLAS reduces in a fixed order (CUDA's reproducibility notes).
DETERMINISTIC_CUBLAS_WORKSPACES = (":4096:8", ":16:8")


@dataclass(frozen=True)
class Runtime:
    """The device a run uses and the numerics it runs under, as set for the process."""

    device: torch.device
    deterministic: bool
    tf32: bool

    def record(self) -> dict:
        """What a set's meta and an evaluation row keep of it (the device is recorded beside it)."""
        return {"deterministic": self.deterministic, "tf32": self.tf32}


def resolve_setting(value: bool | str, purpose: str, name: str) -> bool:
    """A config switch (true, false or "auto") as on or off for ``purpose``."""
    return AUTO_SETTINGS[purpose][name] if value == "auto" else bool(value)


def prepare_runtime(config, purpose: str) -> Runtime:
    """``prepare_device(config.device)``, with the process's numerics set for ``purpose``
    ("distillation" or "evaluation") as ``config.deterministic`` and ``config.tf32`` say.

    The numerics stay set after it returns: call it inside a function under ``scoped_numerics``.
    """
    if purpose not in AUTO_SETTINGS:
        raise ValueError(f"purpose must be one of {', '.join(AUTO_SETTINGS)}, got {purpose!r}")
    runtime = Runtime(device=prepare_device(config.device),
                      deterministic=resolve_setting(config.deterministic, purpose, "deterministic"),
                      tf32=resolve_setting(config.tf32, purpose, "tf32"))
    set_deterministic(runtime.deterministic)
    allow_tf32(runtime.tf32)
    return runtime


def set_deterministic(on: bool) -> None:
    """Turn torch's deterministic mode on or off for the process, cuDNN's and cuBLAS's included."""
    if on:
        fix_cublas_workspace()
    # warn_only: DSA's grid_sample and SRe2L's bilinear interpolate have no deterministic CUDA
    # backward; an error would make those distillers unusable here, a warning names the op instead.
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    if on:
        # benchmarking chooses convolution algorithms by timing them, which differs run to run
        torch.backends.cudnn.benchmark = False


def fix_cublas_workspace() -> None:
    """Give cuBLAS a workspace with which it reduces in a fixed order (kept if one is set already).

    The variable is read when cuBLAS starts, so it can only be relied on when set before CUDA is
    initialised; after that a warning says how to set it in time.
    """
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") in DETERMINISTIC_CUBLAS_WORKSPACES:
        return
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = DETERMINISTIC_CUBLAS_WORKSPACES[0]
    if torch.cuda.is_initialized():
        print(f"rdd: warning: CUDA was initialised before deterministic mode was set up, so cuBLAS may "
              f"keep a non-deterministic workspace; set CUBLAS_WORKSPACE_CONFIG="
              f"{DETERMINISTIC_CUBLAS_WORKSPACES[0]} in the environment before starting", file=sys.stderr)


def allow_tf32(allowed: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions (Ampere and later); no effect on a CPU."""
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


@dataclass(frozen=True)
class Numerics:
    """torch's process-wide settings that ``prepare_runtime`` changes, as they stand."""

    deterministic: bool
    warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    # the matmul precision rather than allow_tf32, which cannot tell "high" from "medium"
    float32_matmul_precision: str
    cudnn_tf32: bool

    @classmethod
    def current(cls) -> "Numerics":
        return cls(torch.are_deterministic_algorithms_enabled(),
                   torch.is_deterministic_algorithms_warn_only_enabled(),
                   torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                   torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)

    def restore(self) -> None:
        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.warn_only)
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.set_float32_matmul_precision(self.float32_matmul_precision)
        torch.backends.cudnn.allow_tf32 = self.cudnn_tf32


def scoped_numerics(function):
    """Decorate a run: whatever numerics it sets, the process has its own back when it returns or
    raises. (CUBLAS_WORKSPACE_CONFIG stays: cuBLAS reads it once, so unsetting it would undo nothing.)"""
    @functools.wraps(function)
    def run_with_numerics_restored(*args, **kwargs):
        before = Numerics.current()
        try:
            result = function(*args, **kwargs)
        except BaseException:
            # A Ctrl-C can land inside torch's first, lazy import of what these settings need;
            # restoring then re-enters that half-done import: the interrupt, not that, is the news.
            try:
                before.restore()
            except Exception:
                pass
            raise
        before.restore()
        return result
    return run_with_numerics_restored


def device_clock(device: torch.device) -> float:
    """``time.perf_counter()`` once ``device`` has finished the work queued on it.

    CUDA kernels run asynchronously: without the synchronisation a timer would stop before its
    work ends and the next timer would be charged with it. On a CPU it is a plain perf_counter.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
