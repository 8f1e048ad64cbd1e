"""Attacks from torchattacks. Models take [0, 1] images and normalize inside, so torchattacks'
own normalization support stays off and eps is in pixel units, as its API expects."""

from __future__ import annotations

from rdd_plugins.errors import RddError
from rdd_plugins.plugins import hookimpl


def pgd(model, eps: float, *, steps: int = 20, alpha: float | None = None, random_start: bool = True):
    """PGD ℓ∞ (Madry et al.): ``steps`` signed-gradient steps of size ``alpha`` (default eps/4),
    projected onto the eps-ball and [0, 1], from a uniform random start."""
    import torchattacks

    if steps < 1:
        raise RddError("pgd: steps must be >= 1")
    return torchattacks.PGD(model, eps=eps, alpha=eps / 4 if alpha is None else alpha, steps=steps,
                            random_start=random_start)


def fgsm(model, eps: float):
    """FGSM ℓ∞ (Goodfellow et al.): one signed-gradient step of size eps."""
    import torchattacks

    return torchattacks.FGSM(model, eps=eps)


@hookimpl
def rdd_register_attacks(register):
    register("pgd", pgd, "torchattacks PGD Linf (steps=20, alpha=eps/4, random start)")
    register("fgsm", fgsm, "torchattacks FGSM Linf")
