"""Built-in regularizers of the real-batch loss whose parameter-gradient gradient matching targets.

``none`` (plain DC), ``curvature`` (GUARD, finite-difference form), ``cure`` (exact CURE, double
backprop), ``gradient-norm`` (input-gradient penalty) and ``adversarial`` (PGD on the real batch: the
adversarial-training-in-the-loop baseline GUARD replaces). All are written with torch.func's
``grad`` (rdd_plugins.distillation.autodiff: torch.func under vmap, autograd in a loop) so the
matching step can vmap them over classes. h and eps are in [0, 1] pixel units.
"""

from __future__ import annotations

import torch

from ..distillation.autodiff import grad, grad_and_value
from ..distillation.contract import Gradients, LossFn
from ..errors import RddError
from ..plugins import hookimpl


class NoRegularizer:
    """Plain gradient matching: the target is the gradient of the real-batch loss."""

    def parameter_gradient(self, loss_fn: LossFn, params: dict, images, labels) -> Gradients:
        return grad(loss_fn)(params, images, labels)

    def __repr__(self) -> str:
        return "NoRegularizer()"


def _per_sample_unit(g: torch.Tensor) -> torch.Tensor:
    """g / ‖g‖₂ per sample, the norm over all pixels and channels."""
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return g / norm.view(-1, *([1] * (g.dim() - 1)))


class Curvature:
    """GUARD's curvature regularizer in its finite-difference form.

    z = h · ∇ₓℓ / ‖∇ₓℓ‖₂ (per sample, over all pixels and channels; h in [0, 1] pixel units, L2),
    penalty = λ · |ℓ(x + z) − ℓ(x)| on the batch mean, z held constant (as CURE and GUARD do).
    ∇ₓℓ comes from the same backward pass that yields ∇θℓ(x), so the cost over plain matching is one forward-backward at
    x + z. The parameter-gradient is ∇θℓ(x) + λ·s·(∇θℓ(x+z) − ∇θℓ(x)), s the sign of the difference.

    ``form="absolute"`` (default) uses λ·|ℓ(x+z) − ℓ(x)| on the batch mean, as GUARD's released
    code does; ``"difference"`` drops the |·|. They differ only on batches where stepping along the
    gradient lowers the loss: rare, but it happens during distillation, and there the difference
    form would reward a loss decrease (docs/decisions.md).

    Defaults h = 1.0 (GUARD's h = 3 in normalized units is 3 × 0.353 ≈ 1.06 pixel L2 on
    Fashion-MNIST) and λ = 0.3: larger λ lowered clean and robust accuracy, 0.3 kept clean accuracy
    (docs/decisions.md).
    """

    def __init__(self, h: float = 1.0, lam: float = 0.3, form: str = "absolute") -> None:
        if h <= 0 or lam < 0:
            raise RddError("curvature: h must be > 0 and lam >= 0")
        if form not in ("difference", "absolute"):
            raise RddError(f"curvature: form must be difference or absolute, got {form!r}")
        self.h, self.lam, self.form = float(h), float(lam), form

    def parameter_gradient(self, loss_fn: LossFn, params: dict, images, labels) -> Gradients:
        (g_params, g_x), loss = grad_and_value(loss_fn, argnums=(0, 1))(params, images, labels)
        z = self.h * _per_sample_unit(g_x)
        g_shift, loss_shift = grad_and_value(loss_fn)(params, images + z, labels)
        weight = self.lam
        if self.form == "absolute":
            weight = self.lam * torch.sign(loss_shift - loss)
        return {k: g + weight * (g_shift[k] - g) for k, g in g_params.items()}

    def __repr__(self) -> str:
        return f"Curvature(h={self.h}, lam={self.lam}, form={self.form!r})"


class Cure:
    """Exact CURE (Moosavi-Dezfooli et al., CVPR 2019) as GUARD's public code uses it:
    penalty = λ · mean_i ‖∇ₓᵢ[ℓᵢ(x + z) − ℓᵢ(x)]‖₂ with z = h · ∇ₓℓ/‖∇ₓℓ‖ held constant, by double
    backprop (dearer than ``curvature``: a second-order backward; docs/decisions.md).

    ℓᵢ is the per-sample loss. CURE's and GUARD's code take ∇ₓ of the batch-mean loss, which
    divides every term by the batch size B: their λ (GUARD: 100) equals our λ · B.
    """

    def __init__(self, h: float = 1.0, lam: float = 1.0) -> None:
        if h <= 0 or lam < 0:
            raise RddError("cure: h must be > 0 and lam >= 0")
        self.h, self.lam = float(h), float(lam)

    def parameter_gradient(self, loss_fn: LossFn, params: dict, images, labels) -> Gradients:
        g_x = grad(loss_fn, argnums=1)(params, images, labels)
        z = self.h * _per_sample_unit(g_x)  # computed outside `total`: constant w.r.t. the params
        batch = images.shape[0]

        def total(p):
            def difference(x):  # summed per-sample losses: ∇ₓ gives per-sample gradients
                return (loss_fn(p, x + z, labels) - loss_fn(p, x, labels)) * batch

            g_diff = grad(difference)(images)
            return loss_fn(p, images, labels) + self.lam * g_diff.flatten(1).norm(dim=1).mean()

        return grad(total)(params)

    def __repr__(self) -> str:
        return f"Cure(h={self.h}, lam={self.lam})"


class GradientNorm:
    """Input-gradient regularization (Drucker & LeCun double backprop; Ross & Doshi-Velez 2018):
    penalty = λ · mean_i ‖∇ₓᵢ ℓᵢ(x)‖₂²."""

    def __init__(self, lam: float = 1.0) -> None:
        if lam < 0:
            raise RddError("gradient-norm: lam must be >= 0")
        self.lam = float(lam)

    def parameter_gradient(self, loss_fn: LossFn, params: dict, images, labels) -> Gradients:
        batch = images.shape[0]

        def total(p):
            def summed(x):
                return loss_fn(p, x, labels) * batch

            g_x = grad(summed)(images)
            return loss_fn(p, images, labels) + self.lam * g_x.flatten(1).pow(2).sum(1).mean()

        return grad(total)(params)

    def __repr__(self) -> str:
        return f"GradientNorm(lam={self.lam})"


class Adversarial:
    """Adversarial training inside the matching loop: the target is ∇θℓ(x_adv) with x_adv from
    PGD-k ℓ∞ on the real batch (Madry et al.), eps and step in pixel units, random start. Every
    iterate stays within eps of the real image and inside [0, 1], or inside the image's own range
    where an augmentation (DSA's colour) has taken it beyond [0, 1].

    This is the expensive baseline GUARD's curvature term replaces: k extra forward-backward passes.
    """

    def __init__(self, eps: float = 8 / 255, steps: int = 10, alpha: float | None = None,
                 random_start: bool = True) -> None:
        if not 0 < eps <= 1 or steps < 1:
            raise RddError("adversarial: eps must be in (0, 1] pixel units and steps >= 1")
        self.eps, self.steps = float(eps), int(steps)
        self.alpha = float(alpha) if alpha is not None else self.eps / 4
        self.random_start = random_start

    def parameter_gradient(self, loss_fn: LossFn, params: dict, images, labels) -> Gradients:
        low, high = self._allowed_box(images)
        x_adv = images
        if self.random_start:
            x_adv = self._project(images + torch.empty_like(images).uniform_(-self.eps, self.eps), low, high)
        input_grad = grad(loss_fn, argnums=1)
        for _ in range(self.steps):
            step = self.alpha * input_grad(params, x_adv, labels).sign()
            x_adv = self._project(x_adv + step, low, high)
        return grad(loss_fn)(params, x_adv, labels)

    def _allowed_box(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel bounds: the eps ball around each image, inside [0, 1] widened to the image's
        own range (exactly ball ∩ [0, 1] for images inside [0, 1]). DSA's colour augmentation
        takes images beyond [0, 1], and clamping them to [0, 1] would move them further than eps."""
        per_sample = tuple(range(1, images.dim()))
        range_low = images.amin(dim=per_sample, keepdim=True).clamp(max=0.0)
        range_high = images.amax(dim=per_sample, keepdim=True).clamp(min=1.0)
        return torch.max(images - self.eps, range_low), torch.min(images + self.eps, range_high)

    @staticmethod
    def _project(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        # tensor bounds through min/max, not data-dependent branching: vmap maps this over classes
        return torch.min(torch.max(x, low), high)

    def __repr__(self) -> str:
        return f"Adversarial(eps={self.eps}, steps={self.steps}, alpha={self.alpha})"


@hookimpl
def rdd_register_regularizers(register):
    register("none", NoRegularizer, "no regularizer: plain gradient matching")
    register("curvature", Curvature,
             "GUARD: lam*|l(x+z)-l(x)|, z = h*grad_x/|grad_x|, h in pixel L2 units (h=1, lam=0.3)")
    register("cure", Cure, "exact CURE: lam*mean|grad_x[l(x+z)-l(x)]|, double backprop")
    register("gradient-norm", GradientNorm, "input-gradient penalty lam*mean|grad_x l|^2")
    register("adversarial", Adversarial, "PGD-k Linf on the real batch before its gradient (AT baseline)")
