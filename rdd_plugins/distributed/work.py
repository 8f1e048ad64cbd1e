"""Which rank does which piece of work, and putting the pieces back together exactly.

Ownership is a pure function of (number of items, number of ranks), so every rank knows who owns
what without asking. Results are combined so that the sum of floats never depends on the number of
ranks: each item's value is computed whole by its owner and *placed* (zeros elsewhere, one
all-reduce: x + 0 is x, up to the sign of a zero), then reduced in item order on every rank.
"""

from __future__ import annotations

import contextlib
import hashlib
import os

import torch

from ..errors import RddError
from .world import World, current_world


def block_of(items: int, world: World | None = None) -> range:
    """The contiguous block of ``range(items)`` this rank owns: blocks differ in size by at most one,
    lower ranks take the larger ones; a rank beyond ``items`` owns nothing."""
    world = world or current_world()
    base, extra = divmod(items, world.size)
    start = world.rank * base + min(world.rank, extra)
    return range(start, start + base + (1 if world.rank < extra else 0))


def dealt_to(items: int, world: World | None = None) -> range:
    """The items dealt round-robin to this rank: rank, rank + size, ... (for units of unequal cost in
    a fixed order, e.g. recover batches)."""
    world = world or current_world()
    return range(world.rank, items, world.size)


def merge_disjoint(tensor: torch.Tensor, world: World | None = None) -> torch.Tensor:
    """Every rank's ``tensor`` holds its own items and zeros at the others' places: after this, every
    rank holds all items, bitwise as their owners computed them (each place sums one value and
    zeros). In place; returns it. One process: unchanged."""
    world = world or current_world()
    if world.distributed:
        import torch.distributed as dist

        if tensor.dtype == torch.bool:
            merged = tensor.to(torch.uint8)
            dist.all_reduce(merged)
            tensor.copy_(merged.bool())
        else:
            dist.all_reduce(tensor)
    return tensor


def any_rank(flags: list[bool], device: torch.device, world: World | None = None) -> list[bool]:
    """Each flag true on every rank when it is true on any (a stop asked for on one rank stops all
    after the same step); one all-reduce for all of them."""
    world = world or current_world()
    if not world.distributed:
        return list(flags)
    import torch.distributed as dist

    values = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


@contextlib.contextmanager
def fail_together(world: World | None = None):
    """Around a phase every rank runs before the next collective (checking inputs, building parts):
    when it fails on any rank, it fails on every rank, with the failing rank's error, instead of
    leaving the others waiting in a collective for a rank that has gone."""
    world = world or current_world()
    if not world.distributed:
        yield
        return
    error = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then raised again
        error = exc
    reports = gather_to_all(None if error is None else _one_line(error), world)
    failed = [(rank, text) for rank, text in enumerate(reports) if text]
    if not failed:
        return
    if error is None:  # another rank's: say which, unless every failed rank failed alike
        rank, text = failed[0]
        alike = all(other == text for _, other in failed)
        error = RddError(text if alike and len(failed) > 1 else f"rank {rank} failed: {text}")
    error.shared_with_rank_0 = True  # rank 0 knows of it and reports it: the CLI says it once
    raise error


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if isinstance(error, RddError) else f"{type(error).__name__}: {text}"


def tensor_digest(tensors: list[torch.Tensor]) -> str:
    """SHA-256 of the tensors' bytes, any dtype (bfloat16 has no numpy type: its bytes are read)."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def same_everywhere(tensors: list[torch.Tensor], what: str, world: World | None = None) -> None:
    """Raise an RddError naming ``what`` unless every rank holds bitwise the same ``tensors`` (a check
    that replicated work, such as the inner loop's network, stayed replicated)."""
    world = world or current_world()
    if not world.distributed:
        return
    import torch.distributed as dist

    digests = [None] * world.size
    dist.all_gather_object(digests, tensor_digest(tensors))
    if len(set(digests)) != 1:
        differing = [r for r, d in enumerate(digests) if d != digests[0]]
        raise RddError(f"{what} differs between ranks (rank 0 vs {differing}): the ranks' runs have diverged")


def gather_to_all(obj, world: World | None = None) -> list:
    """Every rank's ``obj`` (small JSON-like data), in rank order, on every rank."""
    world = world or current_world()
    if not world.distributed:
        return [obj]
    import torch.distributed as dist

    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_from(obj, src: int = 0, world: World | None = None):
    """Rank ``src``'s ``obj`` (small JSON-like data) on every rank."""
    world = world or current_world()
    if not world.distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensors(tensors: list[torch.Tensor], src: int, world: World | None = None) -> None:
    """Rank ``src``'s values into every rank's ``tensors`` (same shapes and dtypes everywhere), in place."""
    world = world or current_world()
    if not world.distributed:
        return
    import torch.distributed as dist

    for t in tensors:
        if not t.is_contiguous():
            raise RddError("broadcast_tensors needs contiguous tensors")
        dist.broadcast(t, src=src)


def replica_checks(world: World | None = None) -> bool:
    """Whether to check that replicated work stayed replicated (RDD_CHECK_REPLICAS=1; one extra
    all-gather of a digest per check, so off by default)."""
    world = world or current_world()
    return world.distributed and os.environ.get("RDD_CHECK_REPLICAS", "") not in ("", "0")
