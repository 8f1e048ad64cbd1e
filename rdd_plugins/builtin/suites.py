"""Built-in attack suites. They only name attacks (the torchattacks integration provides them), so a
plugin that overrides ``pgd`` changes what every suite runs."""

from __future__ import annotations

from ..evaluation.suites import AttackSuite, SuiteAttack
from ..plugins import hookimpl

# RobustBench's leaderboard radii (CIFAR-10: Linf 8/255, L2 0.5).
LEADERBOARD = {"Linf": ("8/255",), "L2": ("0.5",)}


def quick() -> AttackSuite:
    """FGSM, then PGD-20 on the points FGSM did not break, at Linf 8/255 (RobustBench's radius).

    One radius keeps it quick for DC's width-128 ConvNet on a CPU (benchmarks/bench_attacks.py);
    ``--eps 2/255 4/255 8/255 16/255`` gives the curve."""
    return AttackSuite((SuiteAttack("fgsm"), SuiteAttack("pgd", {"steps": 20})), {"Linf": LEADERBOARD["Linf"]})


def standard() -> AttackSuite:
    """Cheap to expensive at RobustBench's radii: Linf FGSM, PGD-20, APGD-CE, Square (5000 queries);
    L2 PGD-20 and CW (a minimum-norm attack, counted only within eps)."""
    return AttackSuite((SuiteAttack("fgsm"), SuiteAttack("pgd", {"steps": 20}), SuiteAttack("apgd-ce"),
                        SuiteAttack("square"), SuiteAttack("pgd-l2", {"steps": 20}), SuiteAttack("cw")),
                       LEADERBOARD)


def autoattack() -> AttackSuite:
    """AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square), Linf 8/255."""
    return AttackSuite((SuiteAttack("autoattack"),), {"Linf": LEADERBOARD["Linf"]})


def dd_robustbench() -> AttackSuite:
    """DD-RobustBench's (Wu et al., 2024, arXiv:2403.13322) Linf grid 1, 2, 3, 4, 8/255 with its
    gradient attacks FGSM, PGD, MI-FGSM and Jitter. Each attack runs on all clean-correct points
    (no cascade), because that benchmark tabulates every attack on its own."""
    return AttackSuite(
        (SuiteAttack("fgsm"), SuiteAttack("pgd", {"steps": 10}), SuiteAttack("mifgsm"), SuiteAttack("jitter")),
        {"Linf": ("1/255", "2/255", "3/255", "4/255", "8/255")}, cascade=False)


@hookimpl
def rdd_register_attack_suites(register):
    register("quick", quick, "FGSM -> PGD-20 at Linf 8/255, cascaded")
    register("standard", standard, "FGSM, PGD, APGD-CE, Square at Linf 8/255; PGD-L2, CW at L2 0.5; cascaded")
    register("autoattack", autoattack, "AutoAttack standard, Linf 8/255")
    register("dd-robustbench", dd_robustbench, "FGSM, PGD-10, MI-FGSM, Jitter each alone at Linf 1/2/3/4/8/255")
