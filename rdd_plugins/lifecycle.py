"""Calling lifecycle hooks through pluggy, each plugin guarded: a failing one is named and the run goes on."""

from __future__ import annotations

import sys
from typing import Any

from .distillation.contract import DistillStep  # noqa: F401  (where plugins have imported it from)
from .errors import RddError
from .plugins import _strict, call_hook, get_plugin_manager


def notify(hook_name: str, **kwargs: Any) -> list:
    """Call ``hook_name`` through pluggy; return the non-None answers.

    A plugin whose implementation raises is named in a warning on stderr and the others' answers
    still count; with ``RDD_STRICT_PLUGINS=1`` that is an error, raised once every plugin has run.
    """
    hook = getattr(get_plugin_manager().hook, hook_name)
    answers, failures = call_hook(hook, kwargs)
    for plugin_name, exc in failures:
        message = f"plugin {plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
        if _strict():
            raise RddError(message) from exc
        print(f"rdd: warning: {message}", file=sys.stderr)
    return [answer for answer in answers or () if answer is not None]
