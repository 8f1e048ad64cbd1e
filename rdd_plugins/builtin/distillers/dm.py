"""``dm``: distribution matching (Zhao & Bilen, WACV 2023)."""

from __future__ import annotations

import torch

from ...distillation.contract import DistillContext
from ...errors import RddError
from .common import SyntheticImages, combine_classes, dataset_stats, embed, has_batch_norm, has_random_layers
from .dsa import DSA_STRATEGY, SiameseAugment


class DistributionMatching:
    """Match per-class means of the penultimate features of randomly initialised networks.

    Each iteration draws a fresh network; loss = Σ_c ‖mean φ(real_c) − mean φ(syn_c)‖². DM's
    defaults: lr_img 1.0, momentum 0.5, batch_real 256, init real (DM runs 20000 iterations), and
    DSA's siamese augmentation of each class's real and synthetic batch before embedding them
    (``strategy``, DM's default ``color_crop_cutout_flip_scale_rotate``; ``"none"`` turns it off).
    The regularizer does not apply (no parameter-gradient is matched). On several ranks the classes
    are shared out as in ``gm`` (all of them on every rank when the backbone has BatchNorm or dropout).
    """

    iterations_needed = True

    def __init__(self, *, lr_img: float = 1.0, momentum_img: float = 0.5, batch_real: int = 256,
                 init: str = "real", clamp: bool = True, strategy: str = DSA_STRATEGY) -> None:
        if batch_real <= 0:
            raise RddError("dm: batch_real must be positive")
        self.images = SyntheticImages(lr=lr_img, momentum=momentum_img, init=init, clamp=clamp, who="dm")
        self.batch_real = batch_real
        self.augment = None if strategy.lower() == "none" else SiameseAugment(strategy, who="dm")

    def real_images_per_class(self, ipc: int) -> int:
        return self.images.real_images_per_class(ipc)

    def init(self, context: DistillContext) -> dict:
        return self.images.init_state(context)

    def step(self, state: dict, context: DistillContext) -> dict[str, float]:
        k, it = context.num_classes, context.iteration
        net = context.fresh_model(it)
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        # With BatchNorm in train mode every class's embedding depends on the whole batch, and with
        # dropout its masks on the batch's make-up: such a step cannot be shared out by class, so
        # every rank computes all of it.
        shared = not (has_batch_norm(net) or has_random_layers(net))
        own = context.own_classes() if shared else range(k)
        latent, syn = self.images.leaf(state, context)
        g_latent = per_class = None
        if len(own):
            real_x, _ = context.real_batch(self.batch_real, key=("real", it), classes=own)
            syn = syn[own.start:own.stop]
            if self.augment is not None:
                generators = [context.generator("augment", it, c) for c in own]
                real_x, syn = self.augment.per_class(real_x, syn, *dataset_stats(context), generators)
            with context.seeded("embed", it):  # a backbone's dropout: the same masks on a resume
                with torch.no_grad():
                    real_mean = embed(net, real_x.flatten(0, 1)).view(len(own), real_x.shape[1], -1).mean(1)
                syn_mean = embed(net, syn.flatten(0, 1)).view(len(own), syn.shape[1], -1).mean(1)
            per_class = ((real_mean - syn_mean) ** 2).sum(1)
            (g_latent,) = torch.autograd.grad(per_class.sum(), latent)
        g_latent, losses = combine_classes(context, own, latent, g_latent, per_class, shared=shared)
        self.images.step(state, context, g_latent)
        return {"dm_loss": float(losses.sum()) / k}

    def result(self, state: dict, context: DistillContext):
        return self.images.pixels(state, context), state["labels"].clone()
