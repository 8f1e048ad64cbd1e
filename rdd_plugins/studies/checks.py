"""Gradient-masking and protocol checks on one evaluated row (a results.json row).

The checklist of AutoAttack (Croce & Hein, ICML 2020) and of Carlini et al., "On Evaluating
Adversarial Robustness" (arXiv:1902.06705): numbers that cannot be right under a sound attack, or
that are typical of a model whose gradients mislead the attacks. A flag is a prompt to look, not a
verdict: on a few hundred test points, two attacks of equal strength can differ by a point.

Each check is a pure function ``row -> list of flag strings``; ``protocol_flags`` runs them all.
Comparisons between attacks need each attack's own accuracy, which rows evaluated without cascade
have (a cascaded attack's accuracy is cumulative over the attacks before it).
"""

from __future__ import annotations

from ..config import parse_eps

# The checklist speaks of kinds of attacks; these are the registered names of each kind.
SINGLE_STEP = ("fgsm",)
ITERATIVE_PREFIXES = ("pgd", "apgd-")
BLACK_BOX = ("square",)
LARGE_LINF_EPS = 0.3  # an eps at which any image can be turned into another class's
NEAR_ZERO = 10.0  # % robust accuracy that counts as "near 0" at such an eps
SLACK = 1e-9  # summaries are rounded means: equal numbers must not trip a check


def _clean(row: dict) -> float:
    return row["summary"]["clean"]["mean"]


def _threats(row: dict) -> dict[str, str]:
    """attack -> threat model, from the row's attack plan."""
    return {a["attack"]: a.get("threat_model", "Linf") for a in row.get("evaluation", {}).get("attacks", [])}


def _per_attack(row: dict) -> dict[str, dict[str, float]]:
    """attack -> eps -> mean robust accuracy (%)."""
    return {attack: {e: s["robust"]["mean"] for e, s in per_eps.items() if s.get("robust")}
            for attack, per_eps in row["summary"].get("attacks", {}).items()}


def _uncascaded(row: dict) -> bool:
    return row.get("evaluation", {}).get("cascade") is False


def _fmt(value: float) -> str:
    return f"{value:.2f}"


def robust_above_clean(row: dict) -> list[str]:
    """Robust accuracy counts points correct both clean and attacked: it can never exceed clean."""
    clean = _clean(row)
    flags = [f"robust above clean: worst case {threat} {e} {_fmt(s['mean'])} > clean {_fmt(clean)}"
             for threat, per_eps in row["summary"].get("worst", {}).items() for e, s in per_eps.items()
             if s["mean"] > clean + SLACK]
    flags += [f"robust above clean: {attack} at {e} {_fmt(v)} > clean {_fmt(clean)}"
              for attack, per_eps in _per_attack(row).items() for e, v in per_eps.items() if v > clean + SLACK]
    return flags


def _iterative(attack: str) -> bool:
    return attack.startswith(ITERATIVE_PREFIXES)


def _same_eps_pairs(row: dict, first, second):
    """(a, b, threat, eps, robust a, robust b) for attacks a (first(a)) and b (second(b)) run at the
    same threat model and eps, each on all clean-correct points."""
    if not _uncascaded(row):
        return
    per, threats = _per_attack(row), _threats(row)
    for a in filter(first, per):
        for b in filter(second, per):
            if a == b or threats.get(a, "Linf") != threats.get(b, "Linf"):
                continue
            for e in (e for e in per[a] if e in per[b]):  # in the evaluation's order: no set order in the flags
                yield a, b, threats.get(a, "Linf"), e, per[a][e], per[b][e]


def single_step_stronger(row: dict) -> list[str]:
    """FGSM is one step of what PGD iterates: when it breaks more points, the iterations are being
    misled (masked or obfuscated gradients)."""
    return [f"single-step stronger than iterative: {a} {_fmt(ra)} < {b} {_fmt(rb)} at {threat} {e}"
            for a, b, threat, e, ra, rb in _same_eps_pairs(row, lambda n: n in SINGLE_STEP, _iterative)
            if ra < rb - SLACK]


def black_box_stronger(row: dict) -> list[str]:
    """A query-only attack that beats every gradient attack at one eps means the gradients mislead."""
    beaten: dict = {}
    for a, b, threat, e, ra, rb in _same_eps_pairs(row, lambda n: n in BLACK_BOX, lambda n: n not in BLACK_BOX):
        beaten.setdefault((a, threat, e), []).append(ra < rb - SLACK)
    return [f"black-box stronger than every white-box attack: {a} at {threat} {e}"
            for (a, threat, e), wins in beaten.items() if all(wins)]


def robust_rising_with_eps(row: dict) -> list[str]:
    """A larger ball holds every adversarial example of a smaller one: accuracy cannot rise with eps
    for a sound attack."""
    threats = _threats(row)
    curves = [(f"worst case {t}", t, {e: s["mean"] for e, s in per_eps.items()})
              for t, per_eps in row["summary"].get("worst", {}).items()]
    curves += [(a, threats.get(a, "Linf"), per_eps) for a, per_eps in _per_attack(row).items()]
    flags = []
    for name, threat, per_eps in curves:
        ordered = sorted(per_eps, key=lambda e: parse_eps(e, threat))
        for small, large in zip(ordered, ordered[1:]):
            if per_eps[large] > per_eps[small] + SLACK:
                flags.append(f"robust rising with eps: {name} {_fmt(per_eps[small])} at {small} -> "
                             f"{_fmt(per_eps[large])} at {large}")
    return flags


def robust_at_huge_eps(row: dict) -> list[str]:
    """At Linf eps >= 0.3 an image can be made into a grey one: accuracy far above 0 there means the
    attack is not working."""
    return [f"robust {_fmt(s['mean'])} % (> {NEAR_ZERO:g}) at Linf {e}, a very large eps"
            for e, s in row["summary"].get("worst", {}).get("Linf", {}).items()
            if parse_eps(e) >= LARGE_LINF_EPS and s["mean"] > NEAR_ZERO]


CHECKS = (robust_above_clean, single_step_stronger, robust_rising_with_eps, black_box_stronger, robust_at_huge_eps)


def protocol_flags(row: dict) -> list[str]:
    """Every check's flags for one row; [] for a row that trips none."""
    return [flag for check in CHECKS for flag in check(row)]
