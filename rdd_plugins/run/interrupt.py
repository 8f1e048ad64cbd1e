"""Stop a loop between steps: the first Ctrl-C (or SIGTERM, as a scheduler sends before a kill)
asks the loop to stop after the current step, where its state is whole and a checkpoint exact; a
second Ctrl-C interrupts at once. Outside such a loop SIGTERM unwinds as Ctrl-C does."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager


class StopRequest:
    def __init__(self) -> None:
        self.requested = False
        self.terminated = False  # the request came as SIGTERM: the command ends as Terminated


@contextmanager
def stop_between_steps(what: str = "the run"):
    """Yields a :class:`StopRequest` whose ``requested`` turns True on the first signal.

    Signal handlers can only be installed from the main thread; elsewhere Ctrl-C keeps its usual
    meaning (an immediate KeyboardInterrupt) and ``requested`` stays False.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum, frame):
        if request.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.requested = True
        request.terminated = request.terminated or signum == signal.SIGTERM
        print(f"\nrdd: stopping {what} after this step and saving a checkpoint (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a loop that stops between steps (an evaluation, say)."""


@contextmanager
def sigterm_unwinds():
    """SIGTERM raises :class:`Terminated` instead of ending the process where it stands, so that
    files being written are cleaned up, finished parts stay, and the command says so."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
