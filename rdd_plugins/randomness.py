"""Random draws keyed by the work they belong to, never by a process.

A run that draws from torch's global generator gets numbers that depend on everything drawn before:
on several processes, where each does part of the work, the streams part ways and the result depends
on the number of processes. Here each draw comes from a generator seeded by its *work key*: the run's
seed and what the draw is for, e.g. ``(seed, "real", iteration, outer_step, class)``. Whichever
process computes that class at that step draws the same numbers, a resumed run needs no saved
generator state, and the 1-process run is the N-process run (docs/distributed.md).

Keys are hashed (BLAKE2b of their JSON), so neighbouring keys give unrelated streams.
"""

from __future__ import annotations

import contextlib
import hashlib
import json

import torch

_SEED_BITS = 63  # torch.Generator.manual_seed takes a non-negative int64


def work_seed(seed: int, *key) -> int:
    """A 63-bit seed for the draw ``key`` (ints and strings) of a run seeded ``seed``."""
    text = json.dumps([int(seed), *key], separators=(",", ":"))
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - _SEED_BITS)


def work_generator(seed: int, *key, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` seeded for the draw ``key``."""
    return torch.Generator(device=device).manual_seed(work_seed(seed, *key))


def forked_rng(device: torch.device | str):
    """torch's generators (the CPU's, and ``device``'s on CUDA) as they were, once the block ends."""
    device = torch.device(device)
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device.index if device.index is not None else torch.cuda.current_device()])


@contextlib.contextmanager
def seeded(seed: int, *key, device: torch.device | str = "cpu"):
    """torch's global generators seeded for ``key`` inside the block and as they were after it: for
    draws made by code that takes no generator (a model's initialisation, a plugin's regularizer)."""
    with forked_rng(device):
        torch.manual_seed(work_seed(seed, *key))
        yield
