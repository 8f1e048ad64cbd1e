"""Config files: read a TOML file into a dict, and write a config dict as TOML that reads back equal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import tomli_w

from ..errors import RddError


def load_toml(config_file: str | Path) -> dict:
    path = Path(config_file)
    if not path.is_file():
        raise RddError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RddError(f"config file {path}: {exc}") from None


def _find_none(value: Any, where: str = "") -> str | None:
    """The dotted key of the first None in ``value``, or None when there is none."""
    if value is None:
        return where or "(the whole config)"
    if isinstance(value, dict):
        children = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        children = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for child_where, child in children:
        found = _find_none(child, child_where)
        if found is not None:
            return found
    return None


def to_toml(data: dict) -> str:
    """``data`` as TOML; ``tomllib.loads`` of the result gives back an equal dict."""
    # tomli_w reports None as a TypeError about NoneType; say which key instead, and what to do.
    where = _find_none(data)
    if where is not None:
        raise RddError(f"TOML cannot hold None (config key {where}); use an empty string or omit the key")
    try:
        return tomli_w.dumps(data)
    except TypeError as exc:
        raise RddError(f"cannot write the config as TOML: {exc}") from None
