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
                      generator: torch.Generator, attempts: int = 10) -> torch.Tensor:
    """(n, views, 5) random-resized-crop boxes drawn as torchvision's RandomResizedCrop draws them
    (SRe2L's and FKD's relabelling crops): a target area of [min_scale, 1] of the image and an aspect
    ratio in [3/4, 4/3] give a box rounded to whole pixels, kept if it fits, up to ``attempts``
    tries; if none fits, the central crop of the largest box with a ratio in that range (the whole
    image when the image's own ratio is in it); a pixel-aligned position; a horizontal flip with
    probability 1/2. Retrying keeps views from falling back to the whole image, as a single draw
    often did (docs/decisions.md).

    All tries are drawn at once, ``attempts`` per box whether needed or not, so it stays vectorised
    and the number of draws is fixed. Draws only from ``generator`` (CPU), so where and how often it
    is called leaves the run's global random stream, and with it resume, untouched.
    """
    h, w = image_size
    u = torch.rand(n, views, attempts, 2, generator=generator, dtype=torch.float64)
    place = torch.rand(n, views, 3, generator=generator, dtype=torch.float64)
    area = h * w * (min_scale + (1.0 - min_scale) * u[..., 0])
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[..., 1])
    width = torch.round(torch.sqrt(area * ratio))  # pixels, as torchvision rounds them
    height = torch.round(torch.sqrt(area / ratio))
    fits = (width > 0) & (width <= w) & (height > 0) & (height <= h)
    first = fits.to(torch.int8).argmax(-1, keepdim=True)  # the first try that fits
    width, height = width.gather(-1, first).squeeze(-1), height.gather(-1, first).squeeze(-1)
    top = torch.floor(place[..., 0] * (h - height + 1))  # uniform over the pixel positions
    left = torch.floor(place[..., 1] * (w - width + 1))
    # torchvision's fallback: the image's ratio clamped to [3/4, 4/3], centred
    if w / h < 3 / 4:
        fallback_w, fallback_h = w, round(w / (3 / 4))
    elif w / h > 4 / 3:
        fallback_w, fallback_h = round(h * (4 / 3)), h
    else:
        fallback_w, fallback_h = w, h
    none_fit = ~fits.any(-1)
    width, height = width.masked_fill(none_fit, fallback_w), height.masked_fill(none_fit, fallback_h)
    top = top.masked_fill(none_fit, (h - fallback_h) // 2)
    left = left.masked_fill(none_fit, (w - fallback_w) // 2)
    flip = (place[..., 2] < 0.5).double()
    return torch.stack([top / h, left / w, height / h, width / w, flip], dim=-1).float()


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
