"""Attack suites: what an evaluation runs, as data.

A suite names registered attacks (cheapest first) and an eps grid per threat model; the evaluation
resolves the names when it runs. ``plan_attacks`` turns a suite, or the user's own list of attacks
and eps, into the ordered work list the evaluation executes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import parse_eps
from ..errors import RddError
from ..registry import Registry

THREAT_MODELS = ("Linf", "L2")
# The grid used when neither the user nor a suite gives one. Linf: DC/GUARD-style small to large;
# L2: RobustBench's CIFAR-10 leaderboard radius.
DEFAULT_EPS = {"Linf": ("2/255", "4/255", "8/255", "16/255"), "L2": ("0.5",)}


@dataclass(frozen=True)
class SuiteAttack:
    attack: str
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AttackSuite:
    attacks: tuple[SuiteAttack, ...]
    eps: dict = field(default_factory=dict)  # threat model -> tuple of eps strings
    cascade: bool = True


@dataclass(frozen=True)
class PlannedAttack:
    """One attack at one threat model, with every eps it runs at."""

    attack: str
    params: dict
    threat_model: str
    eps: tuple[str, ...]


def threat_model_of(registry: Registry, attack: str) -> str:
    entry = registry.get("attacks", attack)
    threat = getattr(entry.factory, "threat_model", "Linf")
    if threat not in THREAT_MODELS:
        raise RddError(f"attack {attack!r} (plugin {entry.plugin!r}) declares threat_model {threat!r}; "
                       f"expected one of {', '.join(THREAT_MODELS)}")
    return threat


def load_suite(registry: Registry, name: str) -> AttackSuite:
    suite = registry.create("attack_suites", name)
    plugin = registry.get("attack_suites", name).plugin
    if not isinstance(suite, AttackSuite) or not suite.attacks:
        raise RddError(f"attack suite {name!r} (plugin {plugin!r}) did not return an AttackSuite with "
                       f"at least one attack")
    unknown = set(suite.eps) - set(THREAT_MODELS)
    if unknown:
        raise RddError(f"attack suite {name!r} (plugin {plugin!r}) has eps for unknown threat models "
                       f"{', '.join(sorted(unknown))}; use {', '.join(THREAT_MODELS)}")
    return suite


def _eps_grid(values, threat: str, where: str) -> tuple[str, ...]:
    grid = tuple(str(v) for v in values)
    parsed = [parse_eps(v, threat) for v in grid]  # a one-line error for a bad eps before any training
    if len(set(parsed)) != len(parsed):
        raise RddError(f"{where} lists the same {threat} eps twice: {', '.join(grid)}")
    return grid


def _split_params(attack_params: dict, names: list[str]) -> dict[str, dict]:
    """Per-attack parameters. A table named after an attack holds that attack's parameters; flat
    keys are allowed only when one attack runs (a flat ``steps`` would be ambiguous otherwise)."""
    per = {n: dict(attack_params[n]) for n in names if isinstance(attack_params.get(n), dict)}
    flat = {k: v for k, v in attack_params.items() if k not in per}
    if flat:
        if len(names) != 1:
            raise RddError(f"evaluate.attack_params has flat keys ({', '.join(sorted(flat))}) but "
                           f"{len(names)} attacks run; give each its own table, e.g. "
                           f"attack_params.{names[-1]}.{next(iter(flat))}")
        per[names[0]] = {**per.get(names[0], {}), **flat}
    return per


def _check_values(registry: Registry, name: str, params: dict, eps: float) -> None:
    """Builds the attack once without a model: parameters it does not take fail (the registry's
    check), and so do bad values (``steps = 0``) in factories that check them and build their
    attack on first use, as ours do. A factory that needs a real model fails here for that reason,
    not its values, and is checked when it gets one. Every attack factory, a plugin's too, is thus
    called once while the plan is made."""
    try:
        registry.create("attacks", name, None, eps, **params)
    except RddError:
        raise
    except Exception:  # noqa: BLE001 - needs a model; its values are checked when it gets one
        pass


def plan_attacks(registry: Registry, *, suite: str = "", attacks: list[str] | None = None,
                 attack_params: dict | None = None, eps: list | None = None,
                 eps_l2: list | None = None, cascade: str = "auto") -> tuple[list[PlannedAttack], bool]:
    """(work list, cascade). Attacks named beside a suite run after the suite's; the user's eps
    lists replace the grid of their threat model."""
    attack_params = attack_params or {}
    attacks = list(attacks or [])
    if suite:
        chosen = load_suite(registry, suite)
        specs = [(a.attack, dict(a.params)) for a in chosen.attacks] + [(a, {}) for a in attacks]
        grid = {t: tuple(chosen.eps.get(t, DEFAULT_EPS[t])) for t in THREAT_MODELS}
        cascade_on = chosen.cascade
    else:
        specs = [(a, {}) for a in attacks or ["pgd"]]
        grid = dict(DEFAULT_EPS)
        cascade_on = True
    if cascade != "auto":
        cascade_on = cascade == "on"
    names = [a for a, _ in specs]
    if len(set(names)) != len(names):
        raise RddError(f"an attack is listed twice: {', '.join(names)}")
    threats = {name: threat_model_of(registry, name) for name in names}
    for threat, given, flag in (("Linf", eps, "eps"), ("L2", eps_l2, "eps_l2")):
        if given and threat not in threats.values():
            raise RddError(f"evaluate.{flag} is given but no {threat} attack runs "
                           f"({', '.join(f'{n} ({t})' for n, t in threats.items())})")
        if given:
            grid[threat] = tuple(str(e) for e in given)
    grid = {t: _eps_grid(v, t, f"the {t} eps grid") for t, v in grid.items()}
    unknown = {k for k, v in attack_params.items() if isinstance(v, dict)} - set(names)
    if unknown:
        raise RddError(f"evaluate.attack_params has tables for attacks that do not run: {', '.join(sorted(unknown))}")
    user = _split_params(attack_params, names)
    plan = []
    for name, params in specs:
        params = {**params, **user.get(name, {})}
        # a parameter typo or a bad value fails before training, not after it
        radii = grid[threats[name]]
        _check_values(registry, name, params, parse_eps(radii[0], threats[name]) if radii else 0.0)
        plan.append(PlannedAttack(name, params, threats[name], grid[threats[name]]))
    return plan, cascade_on
