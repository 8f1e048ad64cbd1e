"""From what a tool stored to our convention: pixels from normalized values, labels as class indices."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import RddError


def float_images(images, what: str) -> tuple[torch.Tensor, list[str]]:
    """Images as float32: uint8 is divided by 255 (and said so); floats are taken as they are."""
    if not isinstance(images, torch.Tensor):
        raise RddError(f"{what}: images must be a tensor, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0), ["uint8 images divided by 255"]
    if not images.is_floating_point():
        raise RddError(f"{what}: images must be floating point or uint8, got {images.dtype}")
    return images.detach().float(), []


def pixels_from_normalized(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                           what: str) -> torch.Tensor:
    """``x * std + mean`` per channel: the inverse of torchvision's Normalize, which these tools
    apply to every image before distilling."""
    if images.dim() != 4:
        raise RddError(f"{what}: images must be a 4-D NCHW tensor, got shape {tuple(images.shape)}")
    channels = images.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise RddError(f"{what}: images have {channels} channels but the normalization has "
                       f"{len(mean)} mean and {len(std)} std values")
    mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor([float(s) for s in std], dtype=torch.float32).view(1, -1, 1, 1)
    return images.float() * std_t + mean_t


def class_indices(labels, what: str) -> tuple[torch.Tensor, list[str]]:
    """1-D labels as int64; float labels (DC's may be) must hold whole numbers."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise RddError(f"{what}: labels must be a 1-D tensor, got {_shape(labels)}")
    if labels.is_floating_point():
        if not torch.isfinite(labels).all() or not torch.equal(labels, labels.round()):
            raise RddError(f"{what}: float labels must be whole class numbers")
        return labels.long(), [f"{labels.dtype} labels as int64"]
    if labels.dtype == torch.bool or labels.is_complex():
        raise RddError(f"{what}: labels must be integers, got {labels.dtype}")
    return labels.long(), []


def hard_or_soft_labels(labels, what: str) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """1-D class indices, or 2-D float rows: one-hot rows become class indices; other rows are
    kept as soft labels (logits) with their argmax as the class."""
    if isinstance(labels, torch.Tensor) and labels.dim() == 2 and labels.is_floating_point():
        rows = labels.float()
        one_hot = bool(((rows == 0) | (rows == 1)).all()) and bool((rows.sum(dim=1) == 1).all())
        if one_hot:
            return rows.argmax(dim=1), None, ["one-hot labels as class indices"]
        if not torch.isfinite(rows).all():
            raise RddError(f"{what}: soft labels contain NaN or inf")
        return rows.argmax(dim=1), rows.contiguous(), ["2-D float labels kept as soft labels (their argmax "
                                                       "as the class)"]
    indices, notes = class_indices(labels, what)
    return indices, None, notes


def _shape(value) -> str:
    shape = getattr(value, "shape", None)
    return f"shape {tuple(shape)}" if shape is not None else type(value).__name__
