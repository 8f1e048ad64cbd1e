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
"""

from __future__ import annotations

import ctypes
import os
import platform

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
    return torch.device(name)


def prepare_device(name: str) -> torch.device:
    """``resolve_device(name)``, with the process set up for it (see the module docstring)."""
    device = resolve_device(name)
    if device.type == "cpu":
        keep_freed_memory()
    return device
