"""Pieces shared by the built-in distillers: synthetic images as optimisable state, embeddings."""

from __future__ import annotations

import torch
from torch import nn

from ...distillation.contract import DistillContext
from ...errors import RddError


def class_major_labels(num_classes: int, ipc: int, device) -> torch.Tensor:
    return torch.arange(num_classes, device=device).repeat_interleave(ipc)


def dataset_stats(context: DistillContext) -> tuple[torch.Tensor, torch.Tensor]:
    dev = context.device
    mean = torch.tensor(context.train.mean, device=dev).view(1, -1, 1, 1)
    std = torch.tensor(context.train.std, device=dev).view(1, -1, 1, 1)
    return mean, std


def random_real_indices(context: DistillContext, per_class: int, who: str) -> torch.Tensor:
    """``per_class`` random training indices of every class, class-major; class c's are the run's
    ``("init", c)`` draw."""
    short = [c for c, ix in enumerate(context.class_indices) if len(ix) < per_class]
    if short:
        raise RddError(f"{who}: classes {short} have fewer than {per_class} images")
    return torch.cat([ix[torch.randperm(len(ix), generator=context.generator("init", c))[:per_class].to(ix.device)]
                      for c, ix in enumerate(context.class_indices)])


def combine_classes(context: DistillContext, own: range, latent: torch.Tensor, grad: torch.Tensor | None,
                    per_class: torch.Tensor | None, *, shared: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(the gradient w.r.t. ``latent`` of every class, the loss of every class (K,)) on every rank,
    from this rank's classes ``own``: their gradient rows (``grad``, zero elsewhere, None when it owns
    none) and their losses. ``shared``: the ranks shared the classes out (``own`` is this rank's
    block), and one all-reduce of both places each class's values exactly as its owner computed
    them (rdd_plugins/distributed/work.py); otherwise every rank computed every class and nothing
    is merged. Every rank of a step must pass the same ``shared``: the merge is a collective."""
    from ...distributed.work import merge_disjoint

    k = context.num_classes
    losses = torch.zeros(k, device=latent.device, dtype=latent.dtype)
    grad = torch.zeros_like(latent) if grad is None else grad
    if per_class is not None and len(own):
        losses[own.start:own.stop] = per_class.detach()
    if not shared or not context.world.distributed:
        return grad, losses
    merged = merge_disjoint(torch.cat([grad.flatten(), losses]), context.world)
    return merged[:-k].view_as(latent), merged[-k:]


def first_images_of_classes(context: DistillContext, classes: int, per_class: int
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` images of the first ``classes`` classes, (classes, per_class, C, H, W)
    with their labels; fewer where the data has fewer. Draws no random numbers."""
    indices = context.class_indices[:classes]
    n = min(per_class, min(len(ix) for ix in indices))
    picks = torch.stack([ix[:n] for ix in indices])
    return context.train.images[picks], context.train.labels[picks]


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def has_random_layers(model: nn.Module) -> bool:
    """Dropout, or a timm-style DropPath / DropBlock: layers that draw in train mode, per batch."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) or type(m).__name__.startswith("Drop")
               for m in model.modules())


def registered_name(part: object, kind: str = "regularizers") -> str:
    """The name ``part``'s class is registered under, for messages; else its class name."""
    from ...plugins import get_registry  # at call time: the registry is built from these modules

    registry = get_registry()
    for name in registry.names(kind):
        if not name.endswith(":") and registry.get(kind, name).factory is type(part):
            return name
    return type(part).__name__


def project_to_pixels(latent: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A latent in normalized units (x - mean) / std, projected onto the [0, 1] pixel box."""
    return torch.max(torch.min(latent, (1 - mean) / std), -mean / std)


class SyntheticImages:
    """IPC images per class, optimised by SGD with momentum in normalized units (x - mean) / std.

    Normalized units are the space DC's and DM's learning rates were tuned in (their images are
    normalized tensors); our models normalize inside, so the gradient w.r.t. the latent equals
    theirs. With ``clamp`` the latent is projected onto [0, 1] pixels after every step (DC and DM
    never clip; our contract needs [0, 1] images, and projecting keeps what is optimised equal to
    what is saved); without it the images are clipped once at the end.
    State: ``latent``, ``momentum``, ``labels`` (tensors, so checkpoints hold them exactly).
    """

    def __init__(self, *, lr: float, momentum: float, init: str, clamp: bool, who: str) -> None:
        if init not in ("real", "noise"):
            raise RddError(f"{who}: init must be real or noise, got {init!r}")
        if lr <= 0 or not 0 <= momentum < 1:
            raise RddError(f"{who}: lr_img must be > 0 and momentum_img in [0, 1)")
        self.lr, self.momentum, self.init, self.clamp, self.who = lr, momentum, init, clamp, who

    def real_images_per_class(self, ipc: int) -> int:
        return ipc if self.init == "real" else 0

    def init_state(self, context: DistillContext) -> dict:
        mean, std = dataset_stats(context)
        k, ipc = context.num_classes, context.ipc
        if self.init == "real":
            latent = (context.train.images[random_real_indices(context, ipc, self.who)] - mean) / std
        else:
            c, (h, w) = context.train.channels, context.train.image_size
            latent = torch.randn(k * ipc, c, h, w, generator=context.generator("init-noise")).to(context.device)
        latent = self._project(latent, mean, std).contiguous()
        return {"latent": latent, "momentum": torch.zeros_like(latent),
                "labels": class_major_labels(k, ipc, context.device)}

    def _project(self, latent, mean, std):
        return project_to_pixels(latent, mean, std) if self.clamp else latent

    def leaf(self, state: dict, context: DistillContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(latent leaf requiring grad, pixel images (K, IPC, C, H, W) differentiable w.r.t. it)."""
        mean, std = dataset_stats(context)
        latent = state["latent"].detach().requires_grad_(True)
        pixels = latent * std + mean
        return latent, pixels.view(context.num_classes, context.ipc, *latent.shape[1:])

    def step(self, state: dict, context: DistillContext, grad: torch.Tensor) -> None:
        mean, std = dataset_stats(context)
        with torch.no_grad():
            momentum = state["momentum"].mul_(self.momentum).add_(grad)
            state["latent"] = self._project(state["latent"] - self.lr * momentum, mean, std)

    def pixels(self, state: dict, context: DistillContext) -> torch.Tensor:
        """Current images, [0, 1] (a clip only undoes float rounding when ``clamp``)."""
        mean, std = dataset_stats(context)
        return (state["latent"] * std + mean).detach().clamp(0.0, 1.0).contiguous()


def embed(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The input of the model's last ``nn.Linear`` (the penultimate features), for any backbone."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise RddError(f"{type(model).__name__} has no nn.Linear head to take features from")
    captured = []
    handle = last[-1].register_forward_hook(lambda mod, inputs, output: captured.append(inputs[0]))
    try:
        model(images)
    finally:
        handle.remove()
    return captured[-1].flatten(1)
