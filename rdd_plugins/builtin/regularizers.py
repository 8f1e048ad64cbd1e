"""Built-in regularizers of the real-batch loss: ``none`` and GUARD's ``curvature``."""

from __future__ import annotations

import torch
from torch.func import grad, grad_and_value

from ..distillation.contract import Gradients, LossFn
from ..errors import RddError
from ..plugins import hookimpl


class NoRegularizer:
    """Plain gradient matching: the target is the gradient of the real-batch loss."""

    def parameter_gradient(self, loss_fn: LossFn, params: dict, images, labels) -> Gradients:
        return grad(loss_fn)(params, images, labels)

    def __repr__(self) -> str:
        return "NoRegularizer()"


class Curvature:
    """GUARD's curvature regularizer in its finite-difference form.

    z = h · ∇ₓℓ / ‖∇ₓℓ‖₂ (per sample, over all pixels and channels; h in [0, 1] pixel units, L2),
    penalty = λ · (ℓ(x + z) − ℓ(x)), with z held constant (as CURE and GUARD do). ∇ₓℓ comes from the
    same backward pass that yields ∇θℓ(x), so the cost over plain matching is one forward-backward at
    x + z. The parameter-gradient is ∇θℓ(x) + λ·(∇θℓ(x+z) − ∇θℓ(x)).

    ``form="absolute"`` uses λ·|ℓ(x+z) − ℓ(x)| (the β-form in GUARD's ImageNet code) on the batch
    mean; it differs only on batches where stepping along the gradient lowers the loss.
    """

    def __init__(self, h: float = 1.0, lam: float = 10.0, form: str = "difference") -> None:
        if h <= 0 or lam < 0:
            raise RddError("curvature: h must be > 0 and lam >= 0")
        if form not in ("difference", "absolute"):
            raise RddError(f"curvature: form must be difference or absolute, got {form!r}")
        self.h, self.lam, self.form = float(h), float(lam), form

    def parameter_gradient(self, loss_fn: LossFn, params: dict, images, labels) -> Gradients:
        (g_params, g_x), loss = grad_and_value(loss_fn, argnums=(0, 1))(params, images, labels)
        norm = g_x.flatten(1).norm(dim=1).clamp_min(1e-12)
        z = (self.h / norm).view(-1, *([1] * (g_x.dim() - 1))) * g_x
        g_shift, loss_shift = grad_and_value(loss_fn)(params, images + z, labels)
        weight = self.lam
        if self.form == "absolute":
            weight = self.lam * torch.sign(loss_shift - loss)
        return {k: g + weight * (g_shift[k] - g) for k, g in g_params.items()}

    def __repr__(self) -> str:
        return f"Curvature(h={self.h}, lam={self.lam}, form={self.form!r})"


@hookimpl
def rdd_register_regularizers(register):
    register("none", NoRegularizer, "no regularizer: plain gradient matching")
    register("curvature", Curvature,
             "GUARD: lam*(l(x+z)-l(x)), z = h*grad_x/|grad_x|, h in pixel L2 units")
