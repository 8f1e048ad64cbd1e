"""The run config's fields and defaults, as dataclasses, and the checks across them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import RddError
from .eps import parse_eps


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
    # "dsa": DSA's augmentation on every training minibatch, DSA's evaluation protocol (DSA trains
    # 1000 epochs then); "none": no augmentation, DC's protocol on Fashion-MNIST and CIFAR
    augment: str = "none"


EVALUATION_AUGMENTS = ("none", "dsa")
# (section, key) -> the value under which a key added later computes what runs computed before it
# existed (RunConfig.to_dict).
KEYS_ADDED_LATER = {("evaluate", "augment"): "none"}


def without_keys_added_later(data: dict) -> dict:
    """``data`` (a config as a dict) less each key added later that holds its old value."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for (section, key), before in KEYS_ADDED_LATER.items():
        if isinstance(data.get(section), dict) and data[section].get(key) == before:
            del data[section][key]
    return data


# The evaluate keys that together say which attacks run at which eps.
ATTACK_PLAN_KEYS = ("suite", "attack", "attack_params", "eps", "eps_l2", "cascade")
# The top-level keys that say how a machine computes a run, not what the run is (a checkpoint
# resumes under other values: rdd_plugins/checkpoint.py).
RUNTIME_KEYS = ("device", "deterministic", "tf32")
SWITCH_KEYS = ("deterministic", "tf32")


class _AdmitsAnyValue(type):
    def __instancecheck__(cls, value) -> bool:
        return True


class AutoOrBool(str, metaclass=_AdmitsAnyValue):
    """The default of a switch that is true, false or "auto" (rdd_plugins/runtime.py decides).

    ``from_dict`` type-checks a value against its default's type, which would refuse true and false
    for a string default; this type lets every value through to ``RunConfig.validate``, which names
    the three that fit.
    """


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"
    # auto: on for distillation (resume must be exact), off for evaluation (speed; seeds average)
    deterministic: bool | str = AutoOrBool("auto")
    # TF32 on Ampere+ GPUs. auto: off for distillation (full fp32), allowed for evaluation training
    tf32: bool | str = AutoOrBool("auto")
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict:
        """The config as written to config.toml and meta.json and as every key, fingerprint and
        comparison sees it. A key added after runs existed is left out while it holds the value that
        computes what runs computed before it (KEYS_ADDED_LATER): checkpoints, seed caches, finished
        sets and study folders written earlier still match, and resolving fills it back in."""
        return without_keys_added_later(dataclasses.asdict(self))

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
        # Checked here, not where the device is made, so that a typo fails before any work starts.
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise RddError(f"device must be auto, cpu or cuda, got {self.device!r}")
        for key in SWITCH_KEYS:
            value = getattr(self, key)
            if not isinstance(value, bool) and value != "auto":
                raise RddError(f'config key {key} must be true, false or "auto", got {value!r}')
            setattr(self, key, value if isinstance(value, bool) else "auto")  # a plain str from here on
        for e in ev.eps:
            parse_eps(e)
        for e in ev.eps_l2:
            parse_eps(e, "L2")
        if ev.cascade not in ("auto", "on", "off"):
            raise RddError(f"evaluate.cascade must be auto, on or off, got {ev.cascade!r}")
        if ev.augment not in EVALUATION_AUGMENTS:
            raise RddError(f"evaluate.augment must be one of {', '.join(EVALUATION_AUGMENTS)}, got {ev.augment!r}")
        return self
