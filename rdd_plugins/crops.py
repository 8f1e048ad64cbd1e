"""Crop views of images stored as boxes, for SRe2L/FKD's per-crop relabelling.

A view is a float row (top, left, height, width, flip): the crop's box as fractions of the image's
height and width, and 1.0 to mirror it horizontally. A distiller samples the boxes and stores the
teacher's soft label of each view; evaluation training shows the student the same views with those
labels. Both sides crop with ``apply_crop_boxes``, so the student sees exactly the pixels the
teacher labelled. Boxes are plain tensors, saved with the set (no pickle).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BOX_FIELDS = ("top", "left", "height", "width", "flip")


def sample_crop_boxes(n: int, views: int, min_scale: float, image_size: tuple[int, int],
                      generator: torch.Generator) -> torch.Tensor:
    """(n, views, 5) random-resized-crop boxes: area fraction in [min_scale, 1], aspect ratio in
    [3/4, 4/3] (torchvision's RandomResizedCrop ranges), a horizontal flip with probability 1/2.

    A box that would not fit becomes the whole image: 14 % of the views at min scale 0.08 and 26 % at
    0.5 on square images (torchvision retries up to 10 times first, so it rarely falls back; one
    draw per box keeps this vectorised and the number of draws fixed). The measurements in README
    were made with this sampler.
    Draws only from ``generator`` (CPU), so where and how often it is called leaves the run's
    global random stream, and with it resume, untouched.
    """
    h, w = image_size
    u = torch.rand(n, views, 5, generator=generator, dtype=torch.float64)
    scale = min_scale + (1.0 - min_scale) * u[..., 0]
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[..., 1])
    width = torch.sqrt(scale * ratio * h / w)
    height = torch.sqrt(scale / ratio * w / h)
    too_big = (width > 1) | (height > 1)
    width, height = width.masked_fill(too_big, 1.0), height.masked_fill(too_big, 1.0)
    top = (1.0 - height) * u[..., 2]
    left = (1.0 - width) * u[..., 3]
    flip = (u[..., 4] < 0.5).double()
    return torch.stack([top, left, height, width, flip], dim=-1).float()


def check_crop_boxes(boxes: torch.Tensor) -> str | None:
    """What is wrong with a (..., 5) box tensor, or None."""
    if boxes.dtype != torch.float32 or boxes.dim() < 1 or boxes.shape[-1] != len(BOX_FIELDS):
        return f"crop boxes must be float32 of shape (..., {len(BOX_FIELDS)}) {BOX_FIELDS}"
    if not torch.isfinite(boxes).all():
        return "crop boxes must be finite"
    top, left, height, width, flip = boxes.unbind(-1)
    tol = 1e-6
    if (height <= 0).any() or (width <= 0).any() or (top < -tol).any() or (left < -tol).any() \
            or (top + height > 1 + tol).any() or (left + width > 1 + tol).any():
        return "crop boxes must lie inside the image (fractions in [0, 1], positive size)"
    if not ((flip == 0) | (flip == 1)).all():
        return "crop boxes' flip must be 0 or 1"
    return None


def apply_crop_boxes(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop each image (N, C, H, W) to its box (N, 5), resized back to H x W (bilinear), mirrored
    where flip is 1. Differentiable with respect to the images.

    One ``grid_sample`` for the whole batch, each image with its own box. Inside the box this is
    crop-then-resize; output pixels on the box's edge may blend in the image pixel just outside it
    (crop-then-resize repeats the edge pixel instead).
    """
    top, left, height, width, flip = boxes.to(images.dtype).unbind(-1)
    # grid_sample's coordinates run from -1 to 1 across the image (align_corners=False): the box
    # [left, left + width] maps to centre -1 + 2 * left + width and half-extent width.
    sign = 1.0 - 2.0 * flip
    theta = torch.zeros(images.shape[0], 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = width * sign
    theta[:, 0, 2] = -1.0 + 2.0 * left + width
    theta[:, 1, 1] = height
    theta[:, 1, 2] = -1.0 + 2.0 * top + height
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
