"""A plain dict tree into the config dataclasses, type-checking each value against its default."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import RddError

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list", dict: "a table"}


def _typed(value: Any, default: Any, where: str) -> Any:
    """``value`` as the type of the field's default, or a one-line error naming the key."""
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is list and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return [value]  # a single eps is a list of one
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise RddError(f"config key {where} must be {_TYPE_NAMES.get(kind, kind.__name__)}, got {value!r}")


def from_dict(cls, data: dict, where: str = ""):
    """``cls(**data)`` with nested tables built as their dataclasses; unknown keys are errors."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise RddError(f"unknown config key {where}{key!r}; known: {', '.join(known)}")
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise RddError(f"config key {where}{key} must be a table")
            value = from_dict(type(default), value, f"{where}{key}.")
        else:
            value = _typed(value, default, f"{where}{key}")
        kwargs[key] = value
    return cls(**kwargs)
