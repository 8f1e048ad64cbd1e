"""The resolved config of a command: a run's own, or a set's own with the caller's settings on top."""

from __future__ import annotations

import copy
from pathlib import Path

from ..config import ATTACK_PLAN_KEYS, RunConfig, config_from_dict, load_toml, merge, resolve
from ..storage import DistilledSet


def run_config(config: RunConfig | dict | str | Path | None, overrides: dict | None = None) -> RunConfig:
    """``config`` (a RunConfig, a nested dict or a TOML path) with ``overrides`` on top; validated."""
    if isinstance(config, RunConfig):
        return config_from_dict(merge(config.to_dict(), overrides or {}))
    if isinstance(config, dict):
        return resolve(base=config, overrides=overrides)
    return resolve(config_file=config, overrides=overrides)


def evaluation_config(distilled: DistilledSet, config: RunConfig | dict | str | Path | None = None,
                      overrides: dict | None = None) -> RunConfig:
    """The set's own run config (dataset, backbone, seed) with the caller's evaluation settings on top."""
    # A set made elsewhere may carry no config: its dataset name is then the one thing to go by.
    base = copy.deepcopy(distilled.meta.get("config") or {"data": {"dataset": distilled.dataset.get("name", "")}})
    # The attack plan is one unit: a caller who names a suite or attacks gets none of the set's
    # stored attack settings (its eps grid or pgd steps would leak into the suite otherwise).
    caller = config.to_dict() if isinstance(config, RunConfig) else config if isinstance(config, dict) else \
        load_toml(config) if config is not None else {}
    asked = {**caller.get("evaluate", {}), **(overrides or {}).get("evaluate", {})}
    if {"suite", "attack"} & set(asked) and isinstance(base.get("evaluate"), dict):
        base["evaluate"] = {k: v for k, v in base["evaluate"].items() if k not in ATTACK_PLAN_KEYS}
    if isinstance(config, RunConfig):
        base = merge(base, config.to_dict())
    elif isinstance(config, dict):
        base = merge(base, config)
    elif config is not None:
        return resolve(config_file=config, overrides=overrides, base=base)
    return resolve(base=base, overrides=overrides)
