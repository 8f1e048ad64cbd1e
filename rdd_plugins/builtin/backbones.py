"""Built-in backbone: DC's ConvNet, with input normalization as its first layer."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import RddError
from ..plugins import hookimpl


class Normalize(nn.Module):
    """(x - mean) / std with per-channel constants: the model, not the data, owns normalization."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "instance":  # DC's 'instancenorm': GroupNorm with one group per channel, affine
        return nn.GroupNorm(channels, channels, affine=True)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise RddError(f"convnet: norm must be instance, batch or none, got {norm!r}")


def _pool_layer(pooling: str) -> nn.Module | None:
    if pooling == "avg":
        return nn.AvgPool2d(2, 2)
    if pooling == "max":
        return nn.MaxPool2d(2, 2)
    if pooling == "none":
        return None
    raise RddError(f"convnet: pooling must be avg, max or none, got {pooling!r}")


def convnet(in_channels: int, num_classes: int, image_size, mean, std, *, width: int = 128,
            depth: int = 3, norm: str = "instance", pooling: str = "avg") -> nn.Module:
    """DC's ConvNet: [conv3x3(width) -> norm -> ReLU -> pool] x depth -> linear.

    As in DC, 28x28 inputs get padding 3 on the first convolution (a 32x32 feature map), so the
    same architecture serves MNIST-family and CIFAR-sized images.
    """
    if width < 1 or depth < 1:
        raise RddError("convnet: width and depth must be positive")
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    layers: list[nn.Module] = [Normalize(mean, std)]
    channels = in_channels
    if h == 28 and w == 28:
        h = w = 32
        first_padding = 3
    else:
        first_padding = 1
    for d in range(depth):
        layers += [
            nn.Conv2d(channels, width, 3, padding=first_padding if d == 0 else 1),
            _norm_layer(norm, width),
            nn.ReLU(),
        ]
        pool = _pool_layer(pooling)
        if pool is not None:
            layers.append(pool)
            h, w = h // 2, w // 2
        channels = width
    if h < 1 or w < 1:
        raise RddError(f"convnet: depth {depth} pools a {image_size} image away; use a smaller depth")
    layers += [nn.Flatten(), nn.Linear(width * h * w, num_classes)]
    return nn.Sequential(*layers)


@hookimpl
def rdd_register_backbones(register):
    register("convnet", convnet, "DC's ConvNet (width, depth, norm=instance|batch|none, pooling=avg|max|none)")
