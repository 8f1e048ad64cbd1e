"""``dm``: distribution matching (Zhao & Bilen, WACV 2023)."""

from __future__ import annotations

import torch

from ...distillation.contract import DistillContext
from ...errors import RddError
from .common import SyntheticImages, embed


class DistributionMatching:
    """Match per-class means of the penultimate features of randomly initialised networks.

    Each iteration draws a fresh network; loss = Σ_c ‖mean φ(real_c) − mean φ(syn_c)‖². DM's
    defaults: lr_img 1.0, momentum 0.5, batch_real 256, init real (DM runs 20000 iterations).
    The regularizer does not apply (no parameter-gradient is matched).
    """

    iterations_needed = True

    def __init__(self, *, lr_img: float = 1.0, momentum_img: float = 0.5, batch_real: int = 256,
                 init: str = "real", clamp: bool = True) -> None:
        if batch_real <= 0:
            raise RddError("dm: batch_real must be positive")
        self.images = SyntheticImages(lr=lr_img, momentum=momentum_img, init=init, clamp=clamp, who="dm")
        self.batch_real = batch_real

    def init(self, context: DistillContext) -> dict:
        return self.images.init_state(context)

    def step(self, state: dict, context: DistillContext) -> dict[str, float]:
        k = context.num_classes
        net = context.make_model()
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        real_x, _ = context.real_batch(self.batch_real)
        with torch.no_grad():
            real_mean = embed(net, real_x.flatten(0, 1)).view(k, real_x.shape[1], -1).mean(1)
        latent, syn = self.images.leaf(state, context)
        syn_mean = embed(net, syn.flatten(0, 1)).view(k, syn.shape[1], -1).mean(1)
        loss = ((real_mean - syn_mean) ** 2).sum()
        (g_latent,) = torch.autograd.grad(loss, latent)
        self.images.step(state, context, g_latent)
        return {"dm_loss": loss.item() / k}

    def result(self, state: dict, context: DistillContext):
        return self.images.pixels(state, context), state["labels"].clone()
