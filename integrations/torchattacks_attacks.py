"""Attacks from torchattacks 3.5.1, as adapters that keep the evaluation's contract.

Our models take [0, 1] images and normalize inside, so torchattacks' own normalization support stays
off and every eps is in pixel units of [0, 1] (8/255 = eight grey levels), which is what its API
expects; a threat model stated in pixels is also what papers report, whatever normalization a model
uses.

Each factory returns an ``_Adapter`` rather than the bare torchattacks object because the evaluation
needs guarantees torchattacks does not give by itself:

* minimum-norm attacks (CW has no eps at all; FAB may end beyond it) must give back the clean image
  for every point they could not break within eps, or the evaluation's budget check rejects them;
* attacks that need the number of classes (APGD-T, targeted FAB, AutoAttack) get none from the
  factory, so they are built on the first batch from the width of the model's logits;
* torchattacks' seeded attacks call ``torch.manual_seed(seed)`` on the global generator; the adapter
  runs them on a forked generator so that evaluating one attack does not reset everyone's RNG;
* the result comes back detached, in the input's dtype and on the input's device.

``torchattacks`` is imported inside the factories: it adds over half a second to start-up, and listing
plugins (``rdd plugins``) should not pay for it.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

from rdd_plugins.errors import RddError
from rdd_plugins.evaluation.robust import inside_ball, perturbation_size
from rdd_plugins.plugins import hookimpl

# The reference AutoAttack (Croce & Hein, 2020) tries the 9 most likely other classes in APGD-T and
# FAB-T whatever the number of classes; torchattacks would try all of them (99 on CIFAR-100).
_N_TARGET_CLASSES = 9


def keep_within_budget(clean: torch.Tensor, adv: torch.Tensor, eps: float, norm: str, *,
                       drop_beyond: bool) -> torch.Tensor:
    """``adv`` projected onto the ``norm`` ball of radius ``eps`` around ``clean`` and onto [0, 1].

    Only float overshoot, up to the evaluation's own tolerance (``robust.BUDGET_SLACK``), is
    projected. A sample further out is replaced by its clean image when ``drop_beyond`` (a
    minimum-norm attack that did not break it within eps), and otherwise returned unchanged, so
    that the evaluation reports the faulty attack.
    """
    delta = (adv - clean).flatten(1)
    size = perturbation_size(clean, adv, norm)
    beyond = ~inside_ball(size, eps)  # NaN counts as beyond
    if norm == "Linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / size.clamp_min(1e-12)).clamp(max=1.0).unsqueeze(1)
    out = (clean + delta.view_as(clean)).clamp(0.0, 1.0)
    fallback = clean if drop_beyond else adv
    return torch.where(beyond.view(-1, *[1] * (clean.dim() - 1)), fallback, out)


class _Adapter:
    """``(images, labels) -> adversarial images`` around a torchattacks attack built on first use."""

    def __init__(self, name: str, model: torch.nn.Module, eps: float, norm: str,
                 build: Callable[[int | None], Any], *, needs_classes: bool = False,
                 minimum_norm: bool = False, seeded: bool = False) -> None:
        self.name, self.model, self.eps, self.norm = name, model, eps, norm
        self._build, self._needs_classes = build, needs_classes
        self._minimum_norm, self._seeded = minimum_norm, seeded
        self.attack = None  # the torchattacks object, once built

    def _model_device(self, images: torch.Tensor) -> torch.device:
        param = next(self.model.parameters(), None)
        return images.device if param is None else param.device

    def _n_classes(self, images: torch.Tensor, device: torch.device) -> int:
        with torch.no_grad():
            logits = self.model(images[:1].to(device))
        if logits.dim() != 2:
            raise RddError(f"attack {self.name!r} needs (batch, classes) logits from the model, "
                           f"got shape {tuple(logits.shape)}")
        return int(logits.shape[1])

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.eps == 0 or images.shape[0] == 0:
            return images.detach().clone()  # the eps-0 ball holds only the clean image
        device = self._model_device(images)
        if self.attack is None:
            self.attack = self._build(self._n_classes(images, device) if self._needs_classes else None)
        # torchattacks fixes its device when built; the model may have moved since.
        self.attack.set_device(device)
        x = images.detach().to(device)
        y = labels.detach().to(device, torch.long)
        # Under an outer no_grad the gradient attacks would fail or silently take no step.
        with torch.enable_grad(), _forked_rng(device, self._seeded):
            adv = self.attack(x, y)
        adv = keep_within_budget(x, adv.detach().to(x.dtype), self.eps, self.norm,
                                 drop_beyond=self._minimum_norm)
        return adv.to(images.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, eps={self.eps:g}, {self.norm}, attack={self.attack!r})"


def _forked_rng(device: torch.device, active: bool):
    """Restores the global RNG after a torchattacks attack that reseeds it (only when ``active``)."""
    devices = []
    if active and device.type == "cuda":
        # torchattacks seeds the *current* CUDA device, which need not be the model's
        current = torch.cuda.current_device()
        devices = sorted({current, current if device.index is None else device.index})
    return torch.random.fork_rng(devices=devices, enabled=active)


# --- parameter checks: one line each, naming the attack and the parameter -------------------------

class _Checks:
    """The parameter checks of one attack; each failure is one line naming the attack and parameter."""

    def __init__(self, attack: str) -> None:
        self.attack = attack

    def eps(self, eps: Any) -> float:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
            raise RddError(f"{self.attack}: eps must be a finite number >= 0, got {eps!r}")
        return float(eps)

    def at_least(self, name: str, value: Any, low: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise RddError(f"{self.attack}: {name} must be an integer >= {low}, got {value!r}")
        return value

    def positive(self, name: str, value: Any, *, allow_zero: bool = False) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0 or (value == 0 and not allow_zero):
            raise RddError(f"{self.attack}: {name} must be a finite number {'>=' if allow_zero else '>'} 0, "
                           f"got {value!r}")
        return float(value)

    def step(self, alpha: Any, default: float) -> float:
        return default if alpha is None else self.positive("alpha", alpha)

    def targets(self, n_classes: int, n_target_classes: int, *, dlr: bool) -> int:
        """torchattacks' ``n_classes`` argument that makes it try ``n_target_classes`` targets."""
        # APGD-T's targeted DLR loss divides by (z_1 - (z_3 + z_4) / 2): it indexes the 4th logit.
        if dlr and n_classes < 4:
            raise RddError(f"{self.attack}: needs a model with at least 4 classes (its targeted DLR loss uses "
                           f"the 4th largest logit); this one has {n_classes}")
        if n_classes < 2:
            raise RddError(f"{self.attack}: needs a model with at least 2 classes; this one has {n_classes}")
        return min(n_target_classes, n_classes - 1) + 1


# --- registration: where each factory is defined ---------------------------------------------------

_ATTACKS: dict[str, Callable[..., _Adapter]] = {}  # name -> factory; rdd_register_attacks registers them


def _attack(name: str, threat_model: str, summary: str, *, none_means: dict[str, str] | None = None):
    """Records the decorated factory as attack ``name`` in ``threat_model`` ("Linf" or "L2").

    ``summary`` is the one human line of its description; the parameters part is read from the
    signature (:func:`describe`), so it cannot fall behind a changed default. ``none_means`` says
    what a ``None`` default stands for, e.g. ``{"alpha": "eps/4"}``.
    """
    def record(factory):
        factory.threat_model = threat_model
        factory.summary = summary
        factory.none_means = dict(none_means or {})
        _ATTACKS[name] = factory
        return factory
    return record


def keyword_defaults(factory: Callable) -> dict[str, Any]:
    """The factory's keyword-only parameters with their defaults, in signature order."""
    return {p.name: p.default for p in inspect.signature(factory).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def describe(factory: Callable) -> str:
    """``<threat model>: <summary>; steps=20, alpha=eps/4, random_start=True`` (all keyword defaults)."""
    head = f"{factory.threat_model}: {factory.summary}"
    defaults = ", ".join(f"{name}={factory.none_means.get(name, value) if value is None else value}"
                         for name, value in keyword_defaults(factory).items())
    return f"{head}; {defaults}" if defaults else head


# --- factories ----------------------------------------------------------------------------------

@_attack("fgsm", "Linf", "FGSM, one signed-gradient step of eps")
def fgsm(model, eps: float):
    """FGSM ℓ∞ (Goodfellow et al., 2015): one signed-gradient step of size eps."""
    import torchattacks

    check = _Checks("fgsm")
    eps = check.eps(eps)
    return _Adapter(check.attack, model, eps, "Linf", lambda _: torchattacks.FGSM(model, eps=eps))


@_attack("pgd", "Linf", "PGD from a random start", none_means={"alpha": "eps/4"})
def pgd(model, eps: float, *, steps: int = 20, alpha: float | None = None, random_start: bool = True):
    """PGD ℓ∞ (Madry et al., 2018): ``steps`` signed-gradient steps of size ``alpha`` (default eps/4),
    projected onto the eps-ball and [0, 1], from a uniform random start."""
    import torchattacks

    check = _Checks("pgd")
    eps = check.eps(eps)
    steps = check.at_least("steps", steps, 1)
    alpha = check.step(alpha, eps / 4)
    return _Adapter(check.attack, model, eps, "Linf", lambda _: torchattacks.PGD(
        model, eps=eps, alpha=alpha, steps=steps, random_start=bool(random_start)))


@_attack("pgd-l2", "L2", "PGD from a random point in the ball", none_means={"alpha": "eps/4"})
def pgd_l2(model, eps: float, *, steps: int = 20, alpha: float | None = None, random_start: bool = True):
    """PGD ℓ2: ``steps`` normalized-gradient steps of length ``alpha`` (default eps/4), projected onto
    the ℓ2 eps-ball and [0, 1], from a random point inside the ball."""
    import torchattacks

    check = _Checks("pgd-l2")
    eps = check.eps(eps)
    steps = check.at_least("steps", steps, 1)
    alpha = check.step(alpha, eps / 4)
    return _Adapter(check.attack, model, eps, "L2", lambda _: torchattacks.PGDL2(
        model, eps=eps, alpha=alpha, steps=steps, random_start=bool(random_start)))


@functools.cache
def _carlini_wagner_class():
    """torchattacks' CW with its two departures from Carlini & Wagner's reference code fixed.

    * Its margin takes ``max((1 - onehot) * logits)`` and ``max(onehot * logits)``: where logits are
      negative, the masked zeros win, the margin is 0 and the attack gets no gradient, so a model
      whose logits are all shifted below zero looks robust (tests/test_attacks.py; see
      docs/decisions.md). Here the true class's logit is taken by index and the others' maximum
      with the true class masked to -inf.
    * Its ``inverse_tanh_space`` maps pixels at exactly 0 or 1 to ±inf (half of Fashion-MNIST's
      pixels are 0). Carlini & Wagner's code scales by 0.999999 before arctanh, which keeps w finite;
      so does this.
    """
    import torchattacks

    class CarliniWagnerL2(torchattacks.CW):
        def inverse_tanh_space(self, x):
            return torch.atanh((x * 2 - 1) * 0.999999)

        def f(self, outputs, labels):
            true_class = torch.nn.functional.one_hot(labels, outputs.shape[1]).bool()
            real = outputs.gather(1, labels.view(-1, 1)).squeeze(1)
            other = outputs.masked_fill(true_class, float("-inf")).amax(dim=1)
            margin = other - real if self.targeted else real - other
            return torch.clamp(margin, min=-self.kappa)

    return CarliniWagnerL2


@_attack("cw", "L2", "Carlini-Wagner, minimum-norm, fixed c (margin and arctanh fixed)")
def cw(model, eps: float, *, c: float = 1.0, kappa: float = 0.0, steps: int = 100, lr: float = 0.01):
    """Carlini-Wagner ℓ2 (2017), fixed ``c`` (torchattacks does no binary search over it). It looks for
    the smallest perturbation; points it breaks only beyond eps count as not broken (clean image).
    torchattacks' CW with its margin and arctanh fixed (:func:`_carlini_wagner_class`)."""
    check = _Checks("cw")
    eps = check.eps(eps)
    c = check.positive("c", c)
    kappa = check.positive("kappa", kappa, allow_zero=True)
    steps = check.at_least("steps", steps, 1)
    lr = check.positive("lr", lr)
    return _Adapter(check.attack, model, eps, "L2",
                    lambda _: _carlini_wagner_class()(model, c=c, kappa=kappa, steps=steps, lr=lr), minimum_norm=True)


@_attack("apgd-ce", "Linf", "APGD-CE, step-size-free PGD on the cross-entropy")
def apgd_ce(model, eps: float, *, steps: int = 100, n_restarts: int = 1, rho: float = 0.75, seed: int = 0):
    """APGD-CE ℓ∞ (Croce & Hein, 2020): step-size-free PGD on the cross-entropy, as in AutoAttack."""
    import torchattacks

    check = _Checks("apgd-ce")
    eps = check.eps(eps)
    steps = check.at_least("steps", steps, 1)
    n_restarts = check.at_least("n_restarts", n_restarts, 1)
    rho = check.positive("rho", rho)
    seed = check.at_least("seed", seed, 0)
    return _Adapter(check.attack, model, eps, "Linf", lambda _: torchattacks.APGD(
        model, norm="Linf", eps=eps, steps=steps, n_restarts=n_restarts, seed=seed, loss="ce", rho=rho),
        seeded=True)


@_attack("apgd-t", "Linf", "APGD-T, targeted DLR against the most likely other classes")
def apgd_t(model, eps: float, *, steps: int = 100, n_restarts: int = 1, n_target_classes: int = _N_TARGET_CLASSES,
           rho: float = 0.75, seed: int = 0):
    """APGD-T ℓ∞ (Croce & Hein, 2020): APGD on the targeted DLR loss against each of the
    ``n_target_classes`` most likely other classes in turn, as in AutoAttack. Needs >= 4 classes."""
    import torchattacks

    check = _Checks("apgd-t")
    eps = check.eps(eps)
    steps = check.at_least("steps", steps, 1)
    n_restarts = check.at_least("n_restarts", n_restarts, 1)
    n_target_classes = check.at_least("n_target_classes", n_target_classes, 1)
    rho = check.positive("rho", rho)
    seed = check.at_least("seed", seed, 0)
    return _Adapter(check.attack, model, eps, "Linf", lambda n: torchattacks.APGDT(
        model, norm="Linf", eps=eps, steps=steps, n_restarts=n_restarts, seed=seed, rho=rho,
        n_classes=check.targets(n, n_target_classes, dlr=True)), needs_classes=True, seeded=True)


@_attack("fab", "Linf", "FAB, minimum-norm (targeted=True: AutoAttack's FAB-T)")
def fab(model, eps: float, *, steps: int = 100, n_restarts: int = 1, targeted: bool = False,
        n_target_classes: int = _N_TARGET_CLASSES, alpha_max: float = 0.1, eta: float = 1.05,
        beta: float = 0.9, seed: int = 0):
    """FAB ℓ∞ (Croce & Hein, 2020), minimum-norm: points it breaks only beyond eps count as not broken.
    ``targeted=True`` is AutoAttack's FAB-T over the ``n_target_classes`` most likely other classes."""
    import torchattacks

    check = _Checks("fab")
    eps = check.eps(eps)
    steps = check.at_least("steps", steps, 1)
    n_restarts = check.at_least("n_restarts", n_restarts, 1)
    n_target_classes = check.at_least("n_target_classes", n_target_classes, 1)
    alpha_max = check.positive("alpha_max", alpha_max)
    eta = check.positive("eta", eta)
    beta = check.positive("beta", beta)
    seed = check.at_least("seed", seed, 0)
    return _Adapter(check.attack, model, eps, "Linf", lambda n: torchattacks.FAB(
        model, norm="Linf", eps=eps, steps=steps, n_restarts=n_restarts, alpha_max=alpha_max, eta=eta,
        beta=beta, seed=seed, multi_targeted=bool(targeted),
        n_classes=check.targets(n, n_target_classes, dlr=False)),
        needs_classes=True, minimum_norm=True, seeded=True)


@_attack("square", "Linf", "Square, score-based random search (no gradients)")
def square(model, eps: float, *, n_queries: int = 5000, n_restarts: int = 1, p_init: float = 0.8, seed: int = 0):
    """Square Attack ℓ∞ (Andriushchenko et al., 2020): score-based random search on the margin loss;
    no gradients, so it also catches gradient masking."""
    import torchattacks

    check = _Checks("square")
    eps = check.eps(eps)
    n_queries = check.at_least("n_queries", n_queries, 1)
    n_restarts = check.at_least("n_restarts", n_restarts, 1)
    p_init = check.positive("p_init", p_init)
    if p_init > 1:
        raise RddError(f"square: p_init must be in (0, 1], got {p_init!r}")
    seed = check.at_least("seed", seed, 0)
    return _Adapter(check.attack, model, eps, "Linf", lambda _: torchattacks.Square(
        model, norm="Linf", eps=eps, n_queries=n_queries, n_restarts=n_restarts, p_init=p_init, seed=seed,
        resc_schedule=False), seeded=True)  # the reference Square / AutoAttack schedule (torchattacks: True)


def _autoattack(name: str, norm: str, model, eps: float, steps: int, n_queries: int, seed: int) -> _Adapter:
    """AutoAttack, standard version: APGD-CE, APGD-T, FAB-T, Square, each on the points the earlier ones
    left unbroken.

    Assembled from torchattacks' parts rather than ``torchattacks.AutoAttack``: that class leaves
    APGD, APGD-T and FAB-T at its 10-step defaults, where the reference AutoAttack runs 100.
    """
    import torchattacks

    check = _Checks(name)
    eps = check.eps(eps)
    steps = check.at_least("steps", steps, 1)
    n_queries = check.at_least("n_queries", n_queries, 1)
    seed = check.at_least("seed", seed, 0)

    def build(n_classes: int):
        n = check.targets(n_classes, _N_TARGET_CLASSES, dlr=True)
        return torchattacks.MultiAttack([
            torchattacks.APGD(model, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce"),
            torchattacks.APGDT(model, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed, n_classes=n),
            torchattacks.FAB(model, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed,
                             multi_targeted=True, n_classes=n),
            torchattacks.Square(model, norm=norm, eps=eps, n_queries=n_queries, n_restarts=1, p_init=0.8,
                                seed=seed, resc_schedule=False),  # as the reference AutoAttack
        ])

    # FAB-T is minimum-norm, but it already keeps only points within eps; a bounded check suffices.
    return _Adapter(name, model, eps, norm, build, needs_classes=True, seeded=True)


_AUTOATTACK_SUMMARY = (f"AutoAttack standard from torchattacks' parts: APGD-CE, APGD-T, FAB-T ({_N_TARGET_CLASSES} "
                       f"target classes; steps each), then Square (n_queries), each on what the previous left")


@_attack("autoattack", "Linf", _AUTOATTACK_SUMMARY)
def autoattack(model, eps: float, *, steps: int = 100, n_queries: int = 5000, seed: int = 0):
    """AutoAttack ℓ∞ standard (Croce & Hein, 2020): APGD-CE, APGD-T, FAB-T (``steps`` each, 9 target
    classes), then Square (``n_queries``); each attacks only what the previous left. Needs >= 4 classes."""
    return _autoattack("autoattack", "Linf", model, eps, steps, n_queries, seed)


@_attack("autoattack-l2", "L2", _AUTOATTACK_SUMMARY)
def autoattack_l2(model, eps: float, *, steps: int = 100, n_queries: int = 5000, seed: int = 0):
    """AutoAttack ℓ2 standard: as ``autoattack`` with every component in the ℓ2 ball."""
    return _autoattack("autoattack-l2", "L2", model, eps, steps, n_queries, seed)


@_attack("mifgsm", "Linf", "MI-FGSM, momentum steps built for transfer, no random start",
         none_means={"alpha": "eps/steps"})
def mifgsm(model, eps: float, *, steps: int = 10, alpha: float | None = None, decay: float = 1.0):
    """MI-FGSM ℓ∞ (Dong et al., 2018): signed steps on a momentum of L1-normalized gradients; the
    paper's step is eps/steps and its decay 1.0. Built for transfer; no random start."""
    import torchattacks

    check = _Checks("mifgsm")
    eps = check.eps(eps)
    steps = check.at_least("steps", steps, 1)
    alpha = check.step(alpha, eps / steps)
    decay = check.positive("decay", decay, allow_zero=True)
    return _Adapter(check.attack, model, eps, "Linf", lambda _: torchattacks.MIFGSM(
        model, eps=eps, alpha=alpha, steps=steps, decay=decay))


@_attack("jitter", "Linf", "Jitter, PGD on jittered softmax outputs", none_means={"alpha": "eps/4"})
def jitter(model, eps: float, *, steps: int = 10, alpha: float | None = None, scale: float = 10.0,
           std: float = 0.1, random_start: bool = True):
    """Jitter ℓ∞ (Schwinn et al., 2021): PGD on an MSE loss of scaled, noise-jittered softmax outputs,
    which keeps pushing after the first misclassification."""
    import torchattacks

    check = _Checks("jitter")
    eps = check.eps(eps)
    steps = check.at_least("steps", steps, 1)
    alpha = check.step(alpha, eps / 4)
    scale = check.positive("scale", scale)
    std = check.positive("std", std, allow_zero=True)
    return _Adapter(check.attack, model, eps, "Linf", lambda _: torchattacks.Jitter(
        model, eps=eps, alpha=alpha, steps=steps, scale=scale, std=std, random_start=bool(random_start)))


@hookimpl
def rdd_register_attacks(register):
    for name, factory in _ATTACKS.items():
        register(name, factory, describe(factory))
