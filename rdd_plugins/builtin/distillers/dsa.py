"""``dsa``: gradient matching with differentiable siamese augmentation (Zhao & Bilen, ICML 2021)."""

from __future__ import annotations

import torch

from ...augmentation import DSA_STRATEGY, SiameseAugment
from ...distillation.contract import DistillContext
from .common import dataset_stats
from .gm import GradientMatching


class DifferentiableSiameseAugmentation(GradientMatching):
    """DSA: DC's gradient matching where real and synthetic batches of a class pass through the
    same randomly drawn differentiable augmentation before their gradients are taken, and the
    inner-loop network trains on augmented synthetic images. DSA's defaults: lr_img 0.1,
    strategy color_crop_cutout_flip_scale_rotate; loops by IPC as DC.
    """

    def __init__(self, *, strategy: str = DSA_STRATEGY, **gm_params) -> None:
        super().__init__(**gm_params)
        self.augment = SiameseAugment(strategy)
        self._stats_key, self._stats = None, None

    def prepare_batches(self, real_x, syn, context: DistillContext, *, key: tuple, classes: range):
        generators = [context.generator(*key, c) for c in classes]
        return self.augment.per_class(real_x, syn, *self._dataset_stats(context), generators)

    def train_batch(self, images, context: DistillContext, *, key: tuple):
        mean, std = self._dataset_stats(context)
        return self.augment.apply([images], mean, std, siamese=False, generator=context.generator(*key))[0]

    def _dataset_stats(self, context: DistillContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The dataset's mean and std on the run's device, made once: every inner-loop minibatch
        needs them, and making them anew copies them from the host each time."""
        key = (context.train.mean, context.train.std, context.device)
        if self._stats_key != key:
            self._stats_key, self._stats = key, dataset_stats(context)
        return self._stats
