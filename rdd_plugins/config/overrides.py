"""Command-line ``--set section.key=value`` overrides, and the nested merge that applies them."""

from __future__ import annotations

import copy
from typing import Any

from ..errors import RddError
from .toml_io import tomllib


class _DottedTable(dict):
    """A table built from dotted --set keys: it updates a ``*params`` table instead of replacing it."""


def _merge(base: dict, override: dict) -> dict:
    # Shares subtrees with its inputs; ``merge`` is the copying version for callers.
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and \
                (not key.endswith("params") or isinstance(value, _DottedTable)):
            out[key] = _merge(out[key], value)
        else:
            out[key] = dict(value) if isinstance(value, _DottedTable) else value
    return out


def merge(base: dict, override: dict) -> dict:
    """Nested merge into a fresh tree (inputs untouched); a ``*params`` table is replaced whole,
    because parameters belong to one part and another part's keys would be rejected by it."""
    return copy.deepcopy(_merge(base, override))


def _parse_value(text: str) -> Any:
    # TOML's value grammar for overrides: numbers, booleans, strings, arrays, inline tables;
    # anything else is taken as a bare string, so `--set data.dataset=cifar10` needs no quotes.
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def override_pairs(pairs: list[str]) -> dict:
    """['distill.params.lr_img=0.05', ...] -> a nested dict.

    A dotted key updates one entry of a ``*params`` table; ``distill.params={...}`` replaces it.
    """
    out: dict = _DottedTable()
    for pair in pairs:
        if "=" not in pair:
            raise RddError(f"override {pair!r} must look like section.key=value")
        dotted, text = pair.split("=", 1)
        keys = dotted.strip().split(".")
        if not all(keys):
            raise RddError(f"override {pair!r} has an empty key")
        node = out
        for i, k in enumerate(keys[:-1]):
            node = node.setdefault(k, _DottedTable())
            if not isinstance(node, dict):
                raise RddError(f"override {pair!r}: {'.'.join(keys[:i + 1])} is a value, not a table")
        node[keys[-1]] = _parse_value(text.strip())
    return out
