"""Clean and robust accuracy, counted the way the field should.

Robust accuracy counts a point only when the model is right on it clean *and* attacked; only the
clean-correct points are attacked at all (a wrong point cannot become robust).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from ..distributed.work import dealt_to, fail_together, merge_disjoint
from ..distributed.world import World, current_world
from ..errors import RddError
from ..progress import bar
from ..randomness import seeded


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, images.shape[0], batch_size)])


def clean_correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    return predict(model, images, batch_size) == labels


# Float32 slack allowed beyond the eps ball: x + eps rounds, and an L2 projection is exact only to
# about 1e-7 of eps. Attack adapters project overshoot up to exactly this much back into the ball.
BUDGET_SLACK = 1e-6


def perturbation_size(x: torch.Tensor, x_adv: torch.Tensor, threat_model: str) -> torch.Tensor:
    """Per sample: the ℓ2 norm ("L2") or the largest absolute pixel change ("Linf") of x_adv - x."""
    delta = (x_adv - x).flatten(1)
    return delta.norm(dim=1) if threat_model == "L2" else delta.abs().amax(1)


def inside_ball(size: torch.Tensor, eps: float) -> torch.Tensor:
    """``size`` within eps up to float32 slack; NaN is outside (it fails the comparison)."""
    return size <= eps * (1 + BUDGET_SLACK) + BUDGET_SLACK


def within_budget(x: torch.Tensor, x_adv: torch.Tensor, eps: float, threat_model: str) -> torch.Tensor:
    """Per sample: finite, in [0, 1] and inside the ``threat_model`` ball of radius ``eps``."""
    finite = torch.isfinite(x_adv.flatten(1)).all(1)
    in_box = (x_adv.flatten(1) >= 0).all(1) & (x_adv.flatten(1) <= 1).all(1)
    return finite & in_box & inside_ball(perturbation_size(x, x_adv, threat_model), eps)


def check_budget(x: torch.Tensor, x_adv: torch.Tensor, eps: float, threat_model: str, desc: str) -> None:
    """An attack that leaves [0, 1] or its eps ball is a bug in the attack: stop, naming it."""
    if not torch.isfinite(x_adv).all():
        raise RddError(f"attack {desc!r} returned non-finite images")
    if float(x_adv.min()) < 0.0 or float(x_adv.max()) > 1.0:
        raise RddError(f"attack {desc!r} returned images outside [0, 1]")
    size = perturbation_size(x, x_adv, threat_model)
    if not inside_ball(size, eps).all():
        raise RddError(f"attack {desc!r} left its {threat_model} ball: perturbation "
                       f"{float(size.max()):.6g} > eps {eps:.6g}")


@contextlib.contextmanager
def frozen_weights(model: nn.Module):
    """Attacks need gradients with respect to the images only. Some (CW, FAB) call
    ``loss.backward()``, which would also compute every weight gradient and leave it in ``.grad``."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def attack_batches(correct: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The attacked points (``correct``'s, in order) in chunks of ``batch_size``: the units of work
    :func:`robust_correct` deals to the ranks and keys the random draws by, the same whatever the
    number of ranks."""
    idx = torch.nonzero(correct).flatten()
    return [idx[start:start + batch_size] for start in range(0, idx.numel(), batch_size)]


def robust_correct(model: nn.Module, attack: Callable, images: torch.Tensor, labels: torch.Tensor,
                   correct: torch.Tensor, batch_size: int = 500, progress: bool = True,
                   desc: str = "attack", eps: float | None = None, threat_model: str = "Linf", *,
                   key: tuple | None = None, world: World | None = None) -> torch.Tensor:
    """Boolean mask: points of ``correct`` that the model still classifies right after ``attack``.

    With ``eps``, every adversarial batch is checked to lie within the ``threat_model`` ball.
    With ``key`` (the run's seed and what the attack is, e.g. ``(seed, "attack", name, eps)``),
    batch i draws from torch's global generators seeded for ``(*key, i)``: a batch's random starts
    depend on its points and its key only, not on the batches attacked before it.

    On several ranks the batches (:func:`attack_batches`) are dealt round-robin; each rank attacks
    its own and every rank returns the whole mask (merged exactly), so with ``key`` the mask is the
    one a single process computes. Only rank 0 shows a bar.
    """
    world = world or current_world()
    model.eval()  # attacks must see the deployed model (no dropout, frozen BN statistics)
    out = torch.zeros_like(correct)
    batches = attack_batches(correct, batch_size)
    mine = dealt_to(len(batches), world)
    # an attack failing on one rank (e.g. leaving its ball) stops every rank, before the merge
    with fail_together(world), frozen_weights(model):
        for index in bar(mine, desc=desc, enabled=progress and world.is_main):
            sel = batches[index]
            x, y = images[sel], labels[sel]
            draws = contextlib.nullcontext() if key is None else seeded(*key, index, device=images.device)
            with draws:
                # copies: an attack that perturbs its input in place must not move the reference the
                # budget check measures against
                x_adv = attack(x.clone(), y.clone())
            if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
                raise RddError(f"attack {desc!r} returned a batch of another shape than its input")
            x_adv = x_adv.detach()
            if eps is None:
                if not torch.isfinite(x_adv).all() or float(x_adv.min()) < 0.0 or float(x_adv.max()) > 1.0:
                    raise RddError(f"attack {desc!r} returned images outside [0, 1]")
            else:
                check_budget(x, x_adv, eps, threat_model, desc)
            out[sel] = predict(model, x_adv, batch_size) == y
    return merge_disjoint(out, world)
