"""The process group a command runs in: one process (the default) or torchrun's ranks.

``torchrun --nproc_per_node=N rdd ...`` exports RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
address; :func:`start_world` joins the group when WORLD_SIZE > 1: NCCL with one GPU per rank
(``LOCAL_RANK``) on CUDA, gloo on a CPU. Collectives time out (``RDD_DIST_TIMEOUT`` seconds,
default 7200) instead of hanging when a rank has died without torchrun noticing. The limit must
exceed the longest phase one rank runs while the others wait for it (training the one model of
``rdd benchmark`` on rank 0, an evaluation model of the last round, a plugin's hook).
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
import traceback
from dataclasses import dataclass
from typing import NoReturn

import torch

from ..errors import RddError

DEFAULT_TIMEOUT_S = 7200


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a command."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, prints and shows progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


_world = World()
_group_ran = False  # a process group was joined in this process (and may be gone by now)


def current_world() -> World:
    """The world :func:`start_world` joined; one process when none was started."""
    return _world


def launched_size() -> int:
    """WORLD_SIZE as torchrun exported it; 1 outside torchrun."""
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(text)
    except ValueError:
        raise RddError(f"WORLD_SIZE={text!r} is not an integer") from None
    if size < 1:
        raise RddError(f"WORLD_SIZE must be at least 1, got {size}")
    return size


def restart_count() -> int:
    """How often torchrun has restarted this command's workers (``--max-restarts``); 0 at first."""
    try:
        return max(0, int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
    except ValueError:
        return 0


def _timeout() -> datetime.timedelta:
    text = os.environ.get("RDD_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        raise RddError(f"RDD_DIST_TIMEOUT={text!r} is not a number of seconds") from None
    if seconds <= 0:
        raise RddError(f"RDD_DIST_TIMEOUT must be positive, got {text}")
    return datetime.timedelta(seconds=seconds)


def start_world() -> World:
    """Join torchrun's process group when WORLD_SIZE > 1 (once per process); the world either way.

    With CUDA present each rank takes GPU ``LOCAL_RANK`` (so "cuda" is its own GPU for every tensor)
    and the group has both backends, NCCL for CUDA tensors and gloo for CPU ones: whichever device
    the command resolves to, its collectives have a backend. Without CUDA, gloo. A plain ``rdd``
    (no torchrun) stays one process.
    """
    global _world, _group_ran
    import torch.distributed as dist

    size = launched_size()
    if size == 1 or (dist.is_available() and dist.is_initialized()):
        if size > 1:
            _world = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
        return _world
    if not dist.is_available():
        raise RddError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RddError(f"WORLD_SIZE={size} but {', '.join(missing)} is not set; launch with "
                       f"torchrun --nproc_per_node={size} $(which rdd) ...")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    backend = "gloo"
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RddError(f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
                           f"start at most that many processes per node")
        torch.cuda.set_device(local_rank)
        backend = "cpu:gloo,cuda:nccl"
    timeout = _timeout()
    # torchrun's agent keeps its store across --max-restarts; with torch 2.14, restarted ranks that
    # registered under the same keys as the attempt before failed to connect (a dead rank's address
    # was read): a prefix per attempt keeps each attempt's keys apart.
    store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
    store = dist.PrefixStore(f"rdd/attempt-{restart_count()}", store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
    _group_ran = True
    _world = World(rank, size, local_rank)
    return _world


def stop_world() -> None:
    """Leave the process group (at the end of a command)."""
    global _world, _group_ran
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        _group_ran = True  # also for a group joined without start_world (a script's own)
        dist.destroy_process_group()
    _world = World()


def finish_process(code: int | str | None) -> NoReturn:
    """End this process as ``sys.exit(code)`` would, past the teardown that a process group can abort.

    Gloo's worker threads can still hold tensors when the interpreter and the C++ runtime tear down,
    and their release aborts the process ("terminate called without an active exception",
    pytorch/pytorch#179291) after every file was written: a finished rank would exit 134 and
    torchrun would report the command failed. So once a group has run here, do what a normal exit
    does up to that teardown: leave the group, wait for the non-daemon threads (and the executors'
    queued work), run the atexit handlers (logging's flush, tempfile's and weakref finalizers, a
    plugin's own), flush stdout and stderr; then ``os._exit``. Skipped: the interpreter's
    finalization (objects' ``__del__`` at shutdown, buffered files nobody closed) and the C++ static
    destructors. A process that never joined a group exits the ordinary way. ``code`` is read as
    ``sys.exit`` reads it: None is 0, an int is the status, anything else is printed and means 1.
    """
    import threading

    import torch.distributed as dist

    if not (_group_ran or (dist.is_available() and dist.is_initialized())):
        sys.exit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    try:
        stop_world()
    except BaseException:  # noqa: BLE001 - the command's work is done; say why, keep its status
        traceback.print_exc()
    # What the interpreter runs first at exit (private, as the interpreter's own call; public join as
    # a fallback).
    wait_for_threads = getattr(threading, "_shutdown", None)
    if wait_for_threads is not None:
        wait_for_threads()
    else:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()  # noqa: SLF001 - the handlers sys.exit would run; prints, never raises
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader gone (`| head`) or a stream closed: nothing to save
            pass
    os._exit(code)
