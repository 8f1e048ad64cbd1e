"""Built-in dataset: ``synthetic``, generated class-structured images for tests and smoke runs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import ImageData
from ..errors import RddError
from ..plugins import hookimpl


def synthetic(root=None, split: str = "train", *, num_classes: int = 10, channels: int = 1,
              image_size: int | tuple[int, int] = 28, per_class: int | None = None,
              noise: float = 0.15, seed: int = 0) -> ImageData:
    """Each class is a smooth random prototype; samples are the prototype plus pixel noise.

    Learnable in a few steps, so tests can check that training and distillation make progress.
    The prototypes depend only on ``seed``; train and test splits draw different noise.
    """
    if split not in ("train", "test"):
        raise RddError(f"synthetic: split must be 'train' or 'test', got {split!r}")
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if num_classes < 2 or channels < 1 or h < 4 or w < 4:
        raise RddError("synthetic: need num_classes >= 2, channels >= 1 and image_size >= 4")
    per_class = per_class or (64 if split == "train" else 32)
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, channels, 4, 4, generator=gen)
    prototypes = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * 0.6 + 0.2
    gen.manual_seed(seed * 1000 + (1 if split == "train" else 2))
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = prototypes[labels] + noise * torch.randn(labels.numel(), channels, h, w, generator=gen)
    images = images.clamp_(0.0, 1.0).float()
    return ImageData(
        images=images,
        labels=labels,
        classes=[f"class{i}" for i in range(num_classes)],
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        name="synthetic",
    )


@hookimpl
def rdd_register_datasets(register):
    register("synthetic", synthetic, "generated class-structured images (any shape), for tests")
