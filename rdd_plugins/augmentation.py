"""DSA's differentiable siamese augmentations (Zhao & Bilen, ICML 2021), shared by the ``dsa``
distiller (siamese pairs of real and synthetic batches) and by evaluation training
(``evaluate.augment = "dsa"``: DSA's evaluation protocol, one transform per minibatch)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import RddError

DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
TRANSFORMS = ("color", "crop", "cutout", "flip", "scale", "rotate")


class SiameseAugment:
    """DSA's differentiable augmentations with DSA's default parameters, in normalized units.

    One transform is drawn per siamese pair and per unpaired call (DSA's mode 'S'). A siamese
    pair (a class's real and synthetic batch) draws one set of parameters and applies it to every
    image of both batches, as DSA's code does when seeded (``Siamese``: every sample takes the
    first sample's draw); the inner loop's unpaired calls draw per sample (DSA's ``seed=-1``).
    Images are augmented as (x - mean) / std, the units DSA's parameters are defined in, and mapped
    back to pixels.
    """

    def __init__(self, strategy: str = DSA_STRATEGY, *, prob_flip: float = 0.5, ratio_scale: float = 1.2,
                 ratio_rotate: float = 15.0, ratio_crop_pad: float = 0.125, ratio_cutout: float = 0.5,
                 brightness: float = 1.0, saturation: float = 2.0, contrast: float = 0.5, who: str = "dsa") -> None:
        self.transforms = strategy.split("_")
        unknown = [t for t in self.transforms if t not in TRANSFORMS]
        if unknown or not self.transforms:
            raise RddError(f"{who}: unknown transforms {unknown} in strategy {strategy!r}; "
                           f"known: {', '.join(TRANSFORMS)}")
        self.prob_flip, self.ratio_scale, self.ratio_rotate = prob_flip, ratio_scale, ratio_rotate
        self.ratio_crop_pad, self.ratio_cutout = ratio_crop_pad, ratio_cutout
        self.brightness, self.saturation, self.contrast = brightness, saturation, contrast

    def __call__(self, real: torch.Tensor, syn: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 generator: torch.Generator | None = None):
        """Augment one class's real (B, C, H, W) and synthetic (S, C, H, W) batches with one and
        the same transform."""
        real, syn = self.per_class(real[None], syn[None], mean, std, [generator])
        return real[0], syn[0]

    def per_class(self, real: torch.Tensor, syn: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                  generators: list[torch.Generator | None] | None = None):
        """Real (K, B, ...) and synthetic (K, S, ...) batches, each class's pair under its own draw
        (a transform and one set of its parameters, shared by the class's real and synthetic
        images), class k's from ``generators[k]`` (None: torch's global generator). Each transform
        drawn then runs once over its classes: a loop over classes would launch a dozen small kernels
        per class."""
        generators = generators or [None] * real.shape[0]
        if len(generators) != real.shape[0]:
            raise ValueError(f"{real.shape[0]} classes but {len(generators)} generators")
        # Drawn on the CPU, as DSA draws its choices: grouping the classes needs no device sync, and
        # a CPU and a GPU run draw the same augmentations.
        choices = [int(torch.randint(len(self.transforms), (1,), generator=g)) for g in generators]
        drawn = [self._draw(self.transforms[t], 1, real[0], g) for t, g in zip(choices, generators)]
        real_parts, syn_parts, order = [], [], []
        for t in sorted(set(choices)):
            name = self.transforms[t]
            members = [i for i, choice in enumerate(choices) if choice == t]
            params = {k: torch.cat([drawn[i][k] for i in members]).to(real.device) for k in drawn[members[0]]}
            classes = torch.tensor(members, device=real.device)
            real_parts.append(self._augment_classes(name, real.index_select(0, classes), params, mean, std))
            syn_parts.append(self._augment_classes(name, syn.index_select(0, classes), params, mean, std))
            order.append(classes)
        restore = torch.argsort(torch.cat(order))
        return torch.cat(real_parts).index_select(0, restore), torch.cat(syn_parts).index_select(0, restore)

    def apply(self, batches: list[torch.Tensor], mean: torch.Tensor, std: torch.Tensor, *,
              siamese: bool, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """One drawn transform applied to every batch: with ``siamese`` one parameter draw for all
        images, otherwise one per image (then ``batches`` holds a single batch). Draws from
        ``generator`` (None: torch's global generator)."""
        if not siamese and len(batches) != 1:
            raise ValueError("per-sample draws augment one batch")
        name = self.transforms[int(torch.randint(len(self.transforms), (1,), generator=generator))]
        params = self._draw(name, 1 if siamese else batches[0].shape[0], batches[0], generator)
        params = {k: v.to(batches[0].device) for k, v in params.items()}
        return [self._augment(name, x, {k: v.expand(x.shape[0], *v.shape[1:]) for k, v in params.items()}, mean, std)
                for x in batches]

    def _draw(self, name: str, n: int, ref: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """``n`` parameter sets of transform ``name`` for images shaped like ``ref``, on the CPU."""
        return getattr(self, f"_draw_{name}")(n, ref.shape[2:], generator)

    def _augment_classes(self, name, x, params, mean, std):
        """Classes' batches (G, N, C, H, W) under ``params`` drawn once per class (G, ...)."""
        per_image = {k: v.repeat_interleave(x.shape[1], dim=0) for k, v in params.items()}
        return self._augment(name, x.flatten(0, 1), per_image, mean, std).reshape(x.shape)

    def _augment(self, name, x, params, mean, std):
        """Images (N, C, H, W) under per-image ``params``, in DSA's normalized units."""
        z = getattr(self, f"_apply_{name}")((x - mean) / std, params)
        return z * std + mean

    # Each transform: _draw_* samples per-sample parameters on the CPU (n, image size, generator);
    # _apply_* is differentiable in x.
    def _draw_color(self, n, size, g):
        return {"b": torch.rand(n, 1, 1, 1, generator=g), "s": torch.rand(n, 1, 1, 1, generator=g),
                "c": torch.rand(n, 1, 1, 1, generator=g)}

    def _apply_color(self, x, p):
        x = x + (p["b"] - 0.5) * self.brightness
        x_mean = x.mean(dim=1, keepdim=True)
        x = (x - x_mean) * (p["s"] * self.saturation) + x_mean
        x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
        return (x - x_mean) * (p["c"] + self.contrast) + x_mean

    def _affine(self, x, theta):
        # DSA calls affine_grid and grid_sample with torch's defaults (align_corners=False)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)

    def _draw_scale(self, n, size, g):
        r = self.ratio_scale
        return {"sx": torch.rand(n, generator=g) * (r - 1 / r) + 1 / r,
                "sy": torch.rand(n, generator=g) * (r - 1 / r) + 1 / r}

    def _apply_scale(self, x, p):
        zeros = torch.zeros_like(p["sx"])
        theta = torch.stack([torch.stack([p["sx"], zeros, zeros], 1), torch.stack([zeros, p["sy"], zeros], 1)], 1)
        return self._affine(x, theta)

    def _draw_rotate(self, n, size, g):
        return {"angle": (torch.rand(n, generator=g) - 0.5) * 2 * self.ratio_rotate / 180 * math.pi}

    def _apply_rotate(self, x, p):
        cos, sin, zeros = torch.cos(p["angle"]), torch.sin(p["angle"]), torch.zeros_like(p["angle"])
        # DSA's matrix (rotating the other way would have the same distribution, not DSA's draws)
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
        return self._affine(x, theta)

    def _draw_flip(self, n, size, g):
        return {"flip": torch.rand(n, 1, 1, 1, generator=g) < self.prob_flip}

    def _apply_flip(self, x, p):
        return torch.where(p["flip"], x.flip(3), x)

    def _draw_crop(self, n, size, g):
        h, w = size
        sh, sw = int(h * self.ratio_crop_pad + 0.5), int(w * self.ratio_crop_pad + 0.5)
        return {"dy": torch.randint(-sh, sh + 1, (n,), generator=g),
                "dx": torch.randint(-sw, sw + 1, (n,), generator=g)}

    def _apply_crop(self, x, p):
        # A random translation with zero padding (DSA's crop), as a differentiable gather.
        n, c, h, w = x.shape
        ys = torch.arange(h, device=x.device).view(1, h, 1) + p["dy"].view(n, 1, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w) + p["dx"].view(n, 1, 1)
        valid = ((ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)).unsqueeze(1)
        ys, xs = ys.clamp(0, h - 1).expand(n, h, w), xs.clamp(0, w - 1).expand(n, h, w)
        flat = (ys * w + xs).view(n, 1, h * w).expand(n, c, h * w)
        return torch.gather(x.reshape(n, c, h * w), 2, flat).view(n, c, h, w) * valid

    def _cutout_size(self, h, w):
        return int(h * self.ratio_cutout + 0.5), int(w * self.ratio_cutout + 0.5)

    def _draw_cutout(self, n, size, g):
        # DSA's geometry: a ch x cw square whose centre ranges over [0, h + 1 - ch % 2), cut where
        # it overlaps the image
        h, w = size
        ch, cw = self._cutout_size(h, w)
        return {"cy": torch.randint(0, h + 1 - ch % 2, (n,), generator=g),
                "cx": torch.randint(0, w + 1 - cw % 2, (n,), generator=g)}

    def _apply_cutout(self, x, p):
        n, _, h, w = x.shape
        ch, cw = self._cutout_size(h, w)
        top = (p["cy"] - ch // 2).view(n, 1, 1)
        left = (p["cx"] - cw // 2).view(n, 1, 1)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)
        return x * (~inside).unsqueeze(1)
