"""One resolved config per run: defaults <- TOML file <- command-line overrides.

The resolved config is written as TOML next to every result, so a run folder says exactly what
produced it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import torch

from .errors import RddError


@dataclass
class DataConfig:
    dataset: str = "fashion-mnist"
    root: str = ""  # "" = the dataset's usual places
    params: dict = field(default_factory=dict)


@dataclass
class BackboneConfig:
    name: str = "convnet"
    params: dict = field(default_factory=dict)


@dataclass
class DistillConfig:
    distiller: str = "gm"
    ipc: int = 10
    iterations: int = 1000  # DC's outer iterations
    params: dict = field(default_factory=dict)
    regularizer: str = "none"
    regularizer_params: dict = field(default_factory=dict)
    checkpoint_every: int = 10  # iterations between checkpoints in the run folder; 0 = none


@dataclass
class EvaluateConfig:
    """DC's evaluation protocol: fresh models, SGD momentum 0.9, wd 5e-4, lr x0.1 at half."""

    # "" = the distillation backbone; a comma list evaluates several, e.g. "convnet,timm:resnet18"
    backbone: str = ""
    # flat keys: for the one backbone; tables named after backbones: per backbone
    backbone_params: dict = field(default_factory=dict)
    seeds: int = 3
    epochs: int = 300
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    suite: str = ""  # a registered attack suite (quick, standard, autoattack, dd-robustbench, ...)
    attack: str = ""  # attack name(s), comma-separated; with a suite: run after the suite's; "" = pgd
    attack_params: dict = field(default_factory=dict)  # flat for one attack, else a table per attack
    # [] = the suite's grid, else 2, 4, 8, 16/255 (16/255 separates methods on Fashion-MNIST, whose
    # models keep much accuracy at 8/255). eps_l2: radii for L2 attacks ([] = suite's, else 0.5).
    eps: list = field(default_factory=list)
    eps_l2: list = field(default_factory=list)
    cascade: str = "auto"  # auto = as the suite says (attack lists: on); on | off
    n_test: int = 0  # 0 = the whole test split
    eval_batch_size: int = 500
    kd_temperature: float = 4.0  # for sets with soft labels (SRe2L): KD at this temperature


# The evaluate keys that together say which attacks run at which eps.
ATTACK_PLAN_KEYS = ("suite", "attack", "attack_params", "eps", "eps_l2", "cascade")


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "RunConfig":
        if self.distill.ipc <= 0:
            raise RddError(f"ipc must be a positive integer, got {self.distill.ipc}")
        if self.distill.checkpoint_every < 0:
            raise RddError("distill.checkpoint_every must be >= 0")
        if self.distill.iterations < 0:
            raise RddError(f"iterations must be >= 0, got {self.distill.iterations}")
        ev = self.evaluate
        if ev.seeds <= 0 or ev.batch_size <= 0 or ev.eval_batch_size <= 0:
            raise RddError("evaluate.seeds, batch_size and eval_batch_size must be positive")
        if ev.epochs < 0 or ev.n_test < 0:
            raise RddError("evaluate.epochs and evaluate.n_test must be >= 0 (n_test 0 = the whole test split)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise RddError(f"device must be auto, cpu or cuda, got {self.device!r}")
        for e in ev.eps:
            parse_eps(e)
        for e in ev.eps_l2:
            parse_eps(e, "L2")
        if ev.cascade not in ("auto", "on", "off"):
            raise RddError(f"evaluate.cascade must be auto, on or off, got {ev.cascade!r}")
        return self


def parse_eps(value: Any, threat_model: str = "Linf") -> float:
    """'8/255' or 0.0314 -> a float in pixel units of [0, 1] images (an L2 radius for "L2")."""
    try:
        eps = float(Fraction(str(value).strip())) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError):
        raise RddError(f"eps {value!r} is not a number or fraction such as 8/255") from None
    if threat_model == "L2":
        # An L2 radius may exceed 1 (the diagonal of [0, 1]^d is sqrt(d)); 64 is a practical bound
        # far above any radius in use (RobustBench's CIFAR-10 L2 is 0.5) that still catches typos.
        if not 0.0 <= eps <= 64.0:
            raise RddError(f"L2 eps {value!r} is outside [0, 64]: eps is an L2 radius in [0, 1] pixel units")
    elif not 0.0 <= eps <= 1.0:
        raise RddError(f"eps {value!r} is outside [0, 1]: eps is in pixel units of [0, 1] images (8/255, not 8)")
    return eps


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


def _from_dict(cls, data: dict, where: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise RddError(f"unknown config key {where}{key!r}; known: {', '.join(known)}")
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise RddError(f"config key {where}{key} must be a table")
            value = _from_dict(type(default), value, f"{where}{key}.")
        else:
            value = _typed(value, default, f"{where}{key}")
        kwargs[key] = value
    return cls(**kwargs)


class _DottedTable(dict):
    """A table built from dotted --set keys: it updates a ``*params`` table instead of replacing it."""


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and \
                (not key.endswith("params") or isinstance(value, _DottedTable)):
            out[key] = _merge(out[key], value)
        else:
            out[key] = dict(value) if isinstance(value, _DottedTable) else value
    return out


def _parse_value(text: str) -> Any:
    # TOML's value grammar for overrides: numbers, booleans, strings, arrays, inline tables.
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


def load_toml(config_file: str | Path) -> dict:
    path = Path(config_file)
    if not path.is_file():
        raise RddError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RddError(f"config file {path}: {exc}") from None


def merge(base: dict, override: dict) -> dict:
    """Nested merge into a fresh tree (inputs untouched); a ``*params`` table is replaced whole,
    because parameters belong to one part and another part's keys would be rejected by it."""
    return copy.deepcopy(_merge(base, override))


def resolve(config_file: str | Path | None = None, overrides: dict | None = None,
            base: dict | None = None) -> RunConfig:
    """defaults <- base (e.g. a preset) <- TOML file <- overrides; validated."""
    data = base or {}
    if config_file:
        data = _merge(data, load_toml(config_file))
    data = merge(data, overrides or {})
    return _from_dict(RunConfig, data, "").validate()


def config_from_dict(data: dict) -> RunConfig:
    return _from_dict(RunConfig, data, "").validate()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RddError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        raise RddError("TOML cannot hold None; use an empty string or omit the key")
    raise RddError(f"cannot write {type(value).__name__} to TOML")


def to_toml(data: dict) -> str:
    """Tables of scalars and inline tables (enough for RunConfig); the output reads back equal."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) or k.endswith("params")}
    tables = {k: v for k, v in data.items() if k not in scalars}
    for k, v in scalars.items():
        lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for name, table in tables.items():
        lines.append(f"\n[{_toml_key(name)}]")
        for k, v in table.items():
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"
