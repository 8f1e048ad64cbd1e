"""Real-subset baselines: ``random`` and ``herding`` (one-shot selectors: no iterations)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...distillation.contract import DistillContext
from ...errors import RddError
from ...evaluation.train import train_model
from ...progress import bar, context_progress
from .common import embed, random_real_indices


class RandomSubset:
    """``ipc`` real images per class drawn at random: class c's are the run's ``("init", c)`` draw, so
    every rank picks the same ones."""

    iterations_needed = False

    def real_images_per_class(self, ipc: int) -> int:
        return ipc

    def init(self, context: DistillContext) -> dict:
        picks = random_real_indices(context, context.ipc, "random")
        return {"images": context.train.images[picks].clone(), "labels": context.train.labels[picks].clone()}

    def step(self, state: dict, context: DistillContext) -> dict[str, float]:
        return {}

    def result(self, state: dict, context: DistillContext):
        return state["images"], state["labels"]


def herding_indices(features: torch.Tensor, count: int) -> torch.Tensor:
    """Welling's herding: greedily pick the sample that keeps the running mean of the picked
    features closest to the class mean."""
    mean = features.mean(0)
    running = torch.zeros_like(mean)
    taken = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
    picks = torch.empty(count, dtype=torch.long, device=features.device)
    for t in range(count):
        distance = ((running + features) / (t + 1) - mean).norm(dim=1).masked_fill(taken, float("inf"))
        # The pick stays a one-element device tensor: reading it on the host would wait for the
        # GPU once per pick.
        pick = distance.argmin().view(1)
        picks[t:t + 1] = pick
        taken.index_fill_(0, pick, True)
        running += features.index_select(0, pick)[0]
    return picks


class Herding:
    """Herding on the penultimate features of a backbone trained for ``feature_epochs`` on the
    full training set (DC's evaluation training; DC's herding baseline used a trained ConvNet)."""

    iterations_needed = False

    def __init__(self, *, feature_epochs: int = 1, lr: float = 0.01, batch_size: int = 256) -> None:
        if feature_epochs < 0 or lr <= 0 or batch_size <= 0:
            raise RddError("herding: feature_epochs >= 0, lr > 0 and batch_size > 0 are needed")
        self.feature_epochs, self.lr, self.batch_size = feature_epochs, lr, batch_size

    def real_images_per_class(self, ipc: int) -> int:
        return ipc

    def init(self, context: DistillContext) -> dict:
        random_real_indices(context, context.ipc, "herding")  # every class must have enough images
        images, labels = context.train.images, context.train.labels
        net = self._feature_network(context)
        picks = []
        with torch.inference_mode():
            for ix in context.class_indices:
                feats = torch.cat([embed(net, images[ix[i:i + 1000]]) for i in range(0, len(ix), 1000)])
                picks.append(ix[self.select(feats, context.ipc)])
        picks = torch.cat(picks)
        return {"images": images[picks].clone(), "labels": labels[picks].clone()}

    def select(self, features: torch.Tensor, count: int) -> torch.Tensor:
        """Which ``count`` of a class's embedded images to keep: Welling's herding."""
        return herding_indices(features, count)

    def _feature_network(self, context: DistillContext) -> nn.Module:
        """The backbone trained on the full training set, with a bar counting its batches.

        Replicated: on several ranks each trains the same network (its initialisation and its
        shuffles are the run's ``("herding", ...)`` draws) and so picks the same images; training it
        data-parallel would make it depend on the number of ranks (see sre2l's teacher)."""
        images, labels = context.train.images, context.train.labels
        net = context.fresh_model("herding")
        batches = self.feature_epochs * math.ceil(images.shape[0] / self.batch_size)
        with bar(total=batches, desc="herding features", unit="batch", enabled=context_progress(context)) as pbar:
            # train_model's own bar counts epochs, and herding trains few long ones; it runs the
            # network once per training batch, so a forward hook counts batches without changing them.
            counter = net.register_forward_hook(lambda *_: pbar.update(1))
            try:
                with context.seeded("herding", "train"):  # train_model shuffles with torch's generator
                    return train_model(net, images, labels, epochs=self.feature_epochs, lr=self.lr,
                                       batch_size=self.batch_size, progress=False)
            finally:
                counter.remove()

    def step(self, state: dict, context: DistillContext) -> dict[str, float]:
        return {}

    def result(self, state: dict, context: DistillContext):
        return state["images"], state["labels"]
