"""Calling lifecycle hooks: each plugin alone, so a failing one is named and the run goes on."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import RddError
from .plugins import _strict, get_plugin_manager


@dataclass(frozen=True)
class DistillStep:
    """Read-only view of one finished distillation iteration (see ``rdd_distill_step``)."""

    iteration: int
    iterations: int
    losses: dict
    seconds: float
    config: dict = field(repr=False)
    images: Callable[[], Any] = field(repr=False)


def notify(hook_name: str, **kwargs) -> list:
    """Call every implementation of ``hook_name``; return the non-None results."""
    hook = getattr(get_plugin_manager().hook, hook_name)
    results = []
    for impl in hook.get_hookimpls():
        try:
            value = impl.function(**kwargs)
        except Exception as exc:
            message = f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
            if _strict():
                raise RddError(message) from exc
            print(f"rdd: warning: {message}", file=sys.stderr)
            continue
        if value is not None:
            results.append(value)
    return results
