"""Process set-up for the device a run uses: resolve it, and on a CPU keep freed memory for reuse.

Why the CPU part: glibc's malloc serves every allocation above its mmap threshold (at most 32 MiB)
with a fresh ``mmap`` and gives it back with ``munmap`` on free. PyTorch's CPU allocator has no
cache, so each large activation (DC's width-128 ConvNet on a real batch of 256 allocates 134 MiB
tensors) is mapped anew and its pages are faulted in and zeroed by the kernel on first touch, every
step: in DC's setting on 2 cores, 40 % of a gradient-matching step's CPU time was spent in the
kernel, and the step ran 1.8-2.0x faster without it (``python benchmarks/bench_distill.py --setting
dc --dc-repo PATH`` shows DC's own code both ways). Turning mmap off for malloc
and never trimming the heap makes freed blocks reusable, as PyTorch's CUDA caching allocator does
on a GPU: identical numbers, a higher resident peak (the heap keeps its high-water mark).

Set ``RDD_SYSTEM_MALLOC=1`` in the environment to leave malloc as it is (e.g. when several
processes share a machine's memory). Other C libraries than glibc are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import platform

import torch

from .config import resolve_device

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
    if os.environ.get("RDD_SYSTEM_MALLOC", "") not in ("", "0") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success. The trim threshold is an int: its largest value keeps the heap.
    _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied


def use_device(name: str) -> torch.device:
    """``resolve_device(name)``, with the process set up for it (see the module docstring)."""
    device = resolve_device(name)
    if device.type == "cpu":
        keep_freed_memory()
    return device
