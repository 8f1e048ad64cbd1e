"""One resolved config per run: defaults <- preset <- TOML file <- command-line overrides.

The resolved config is written as TOML next to every result, so a run folder says exactly what
produced it. Each job lives in its own module: ``schema`` (fields, defaults, checks), ``typed``
(dict -> dataclasses), ``eps`` (attack budgets), ``overrides`` (``--set`` and merging) and
``toml_io`` (reading and writing TOML). This package does not import torch.
"""

from __future__ import annotations

from pathlib import Path

from .eps import parse_eps
from .overrides import _merge, merge, override_pairs
from .schema import ATTACK_PLAN_KEYS, BackboneConfig, DataConfig, DistillConfig, EvaluateConfig, RunConfig
from .toml_io import load_toml, to_toml
from .typed import from_dict

__all__ = ["RunConfig", "DataConfig", "BackboneConfig", "DistillConfig", "EvaluateConfig",
           "ATTACK_PLAN_KEYS", "parse_eps", "override_pairs", "load_toml", "merge", "resolve",
           "config_from_dict", "to_toml", "resolve_device"]


def resolve(config_file: str | Path | None = None, overrides: dict | None = None,
            base: dict | None = None) -> RunConfig:
    """defaults <- base (e.g. a preset) <- TOML file <- overrides; validated."""
    data = base or {}
    if config_file:
        data = _merge(data, load_toml(config_file))
    data = merge(data, overrides or {})
    return config_from_dict(data)


def config_from_dict(data: dict) -> RunConfig:
    return from_dict(RunConfig, data).validate()


def __getattr__(name):
    # resolve_device lives in rdd_plugins.runtime (it needs torch); kept importable from here for
    # older callers, loaded only when asked for so that importing the config never imports torch.
    if name == "resolve_device":
        from ..runtime import resolve_device

        return resolve_device
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
