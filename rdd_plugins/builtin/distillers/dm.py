"""``dm``: distribution matching (Zhao & Bilen, WACV 2023)."""

from __future__ import annotations

import torch

from ...distillation.contract import DistillContext
from ...errors import RddError
from .common import SyntheticImages, dataset_stats, embed
from .dsa import DSA_STRATEGY, SiameseAugment


class DistributionMatching:
    """Match per-class means of the penultimate features of randomly initialised networks.

    Each iteration draws a fresh network; loss = Σ_c ‖mean φ(real_c) − mean φ(syn_c)‖². DM's
    defaults: lr_img 1.0, momentum 0.5, batch_real 256, init real (DM runs 20000 iterations), and
    DSA's siamese augmentation of each class's real and synthetic batch before embedding them
    (``strategy``, DM's default ``color_crop_cutout_flip_scale_rotate``; ``"none"`` turns it off).
    The regularizer does not apply (no parameter-gradient is matched).
    """

    iterations_needed = True

    def __init__(self, *, lr_img: float = 1.0, momentum_img: float = 0.5, batch_real: int = 256,
                 init: str = "real", clamp: bool = True, strategy: str = DSA_STRATEGY) -> None:
        if batch_real <= 0:
            raise RddError("dm: batch_real must be positive")
        self.images = SyntheticImages(lr=lr_img, momentum=momentum_img, init=init, clamp=clamp, who="dm")
        self.batch_real = batch_real
        self.augment = None if strategy.lower() == "none" else SiameseAugment(strategy, who="dm")

    def init(self, context: DistillContext) -> dict:
        return self.images.init_state(context)

    def step(self, state: dict, context: DistillContext) -> dict[str, float]:
        k = context.num_classes
        net = context.make_model()
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        real_x, _ = context.real_batch(self.batch_real)
        latent, syn = self.images.leaf(state, context)
        if self.augment is not None:
            real_x, syn = self.augment.per_class(real_x, syn, *dataset_stats(context))
        with torch.no_grad():
            real_mean = embed(net, real_x.flatten(0, 1)).view(k, real_x.shape[1], -1).mean(1)
        syn_mean = embed(net, syn.flatten(0, 1)).view(k, syn.shape[1], -1).mean(1)
        loss = ((real_mean - syn_mean) ** 2).sum()
        (g_latent,) = torch.autograd.grad(loss, latent)
        self.images.step(state, context, g_latent)
        return {"dm_loss": loss.item() / k}

    def result(self, state: dict, context: DistillContext):
        return self.images.pixels(state, context), state["labels"].clone()
