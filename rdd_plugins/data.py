"""The one pixel convention: float32 NCHW images in [0, 1], int64 labels, metadata beside them."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import RddError


@dataclass
class ImageData:
    """A labelled image set as every contract passes it. Normalization belongs to the model."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_image_batch(self.images, self.labels, len(self.classes), what=f"dataset {self.name!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise RddError(f"dataset {self.name!r}: mean/std need {self.channels} values, one per channel")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def meta(self) -> dict:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "channels": self.channels,
            "image_size": list(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
        }


def check_image_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int, what: str = "images", *,
                      allow_outside_unit_range: bool = False) -> None:
    """Raise a one-line RddError unless images/labels follow the pixel convention.

    ``allow_outside_unit_range`` is for an imported training set kept as its tool made it (DC never
    clips; see ``rdd import``): still finite float32 in pixel units, but not bounded by [0, 1].
    Test data, attacks and our own distillers keep the [0, 1] contract."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise RddError(f"{what}: images must be a 4-D NCHW tensor, got shape {tuple(getattr(images, 'shape', ()))}")
    if images.dtype != torch.float32:
        raise RddError(f"{what}: images must be float32, got {images.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise RddError(f"{what}: labels must be a 1-D tensor with one label per image")
    if labels.dtype != torch.int64:
        raise RddError(f"{what}: labels must be int64, got {labels.dtype}")
    if images.numel():
        if not torch.isfinite(images).all():
            raise RddError(f"{what}: images contain NaN or inf")
        lo, hi = float(images.min()), float(images.max())
        if (lo < 0.0 or hi > 1.0) and not allow_outside_unit_range:
            raise RddError(f"{what}: images must lie in [0, 1] (pixel units), found values in [{lo:.3g}, {hi:.3g}]")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise RddError(f"{what}: labels must lie in 0..{num_classes - 1}")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST family), gzipped or not, without any third-party library."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise RddError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise RddError(f"{path}: truncated IDX file ({data.size} bytes for shape {dims})")
    return data.reshape(dims)


def uint8_to_images(array: np.ndarray, channels_last: bool = False) -> torch.Tensor:
    """uint8 (N,H,W) / (N,H,W,C) / (N,C,H,W) -> float32 NCHW in [0, 1]."""
    t = torch.from_numpy(np.array(array, copy=True))  # IDX buffers are read-only
    if t.dim() == 3:
        t = t.unsqueeze(1)
    elif channels_last:
        t = t.permute(0, 3, 1, 2)
    return t.contiguous().float().div_(255.0)
