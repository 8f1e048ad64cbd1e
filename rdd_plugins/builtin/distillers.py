"""Built-in distillers: ``gm`` (DC gradient matching) and ``random`` (a real-subset baseline)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..distillation.contract import DistillContext
from ..distillation.matching import (layerwise_distance, make_loss_fn, real_class_gradients,
                                synthetic_class_gradients, trainable_params, use_vmap)
from ..errors import RddError
from ..plugins import hookimpl

# DC's (outer_loop, inner_loop) by images per class.
DC_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def dc_loops(ipc: int) -> tuple[int, int]:
    """DC's table; between its rows, the row of the largest IPC not above ``ipc``."""
    return DC_LOOPS[max(k for k in DC_LOOPS if k <= ipc)]


def _class_major_labels(num_classes: int, ipc: int, device) -> torch.Tensor:
    return torch.arange(num_classes, device=device).repeat_interleave(ipc)


def _stats(context: DistillContext) -> tuple[torch.Tensor, torch.Tensor]:
    dev = context.device
    mean = torch.tensor(context.train.mean, device=dev).view(1, -1, 1, 1)
    std = torch.tensor(context.train.std, device=dev).view(1, -1, 1, 1)
    return mean, std


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class GradientMatching:
    """DC (Zhao et al., ICLR 2021): match per-class parameter-gradients of real and synthetic batches.

    Defaults are DC's: lr_img 0.1 with momentum 0.5, lr_net 0.01, batch_real 256, batch_train 256,
    (outer_loop, inner_loop) from DC's table by IPC. ``class_batching``: auto (vmap on CUDA, a
    loop over classes on CPU), vmap or loop; both give the same gradients. The real-batch gradient comes from the run's
    regularizer, which is how GUARD's curvature term enters.

    The images are optimised in normalized units (x - mean) / std, the space DC's lr_img was tuned
    in, and projected onto [0, 1] pixels after every step when ``clamp`` (DC never clips; our
    contract needs [0, 1] images, and the projection keeps what is trained equal to what is saved).
    ``clamp=false`` optimises unconstrained, as DC does, and clips once at the end.
    """

    iterations_needed = True

    def __init__(self, *, lr_img: float = 0.1, momentum_img: float = 0.5, lr_net: float = 0.01,
                 batch_real: int = 256, batch_train: int = 256, outer_loop: int | None = None,
                 inner_loop: int | None = None, init: str = "real", clamp: bool = True,
                 class_batching: str = "auto") -> None:
        if init not in ("real", "noise"):
            raise RddError(f"gm: init must be real or noise, got {init!r}")
        if min(lr_img, lr_net) <= 0 or min(batch_real, batch_train) <= 0:
            raise RddError("gm: learning rates and batch sizes must be positive")
        self.lr_img, self.momentum_img, self.lr_net = lr_img, momentum_img, lr_net
        self.batch_real, self.batch_train = batch_real, batch_train
        self.outer_loop, self.inner_loop = outer_loop, inner_loop
        self.init_mode, self.clamp = init, clamp
        use_vmap(class_batching, torch.device("cpu"))  # validates the choice now, not mid-run
        self.class_batching = class_batching

    def init(self, context: DistillContext) -> dict:
        mean, std = _stats(context)
        k, ipc = context.num_classes, context.ipc
        if self.init_mode == "real":
            picks = torch.cat([ix[torch.randperm(len(ix), device=ix.device)[:ipc]] for ix in context.class_indices])
            if picks.numel() < k * ipc:
                raise RddError(f"gm: init real needs {ipc} images per class; a class has fewer")
            latent = (context.train.images[picks] - mean) / std
        else:
            c, (h, w) = context.train.channels, context.train.image_size
            latent = torch.randn(k * ipc, c, h, w, device=context.device)
        latent = self._project(latent, mean, std)
        outer, inner = dc_loops(ipc)
        return {
            "latent": latent.contiguous(),
            "momentum": torch.zeros_like(latent),
            "labels": _class_major_labels(k, ipc, context.device),
            "outer_loop": self.outer_loop or outer,
            "inner_loop": self.inner_loop if self.inner_loop is not None else inner,
        }

    def _project(self, latent, mean, std):
        if not self.clamp:
            return latent
        return torch.max(torch.min(latent, (1 - mean) / std), -mean / std)

    def step(self, state: dict, context: DistillContext) -> dict[str, float]:
        mean, std = _stats(context)
        k, ipc = context.num_classes, context.ipc
        net = context.make_model()
        net.train()
        params = trainable_params(net)
        loss_fn = make_loss_fn(net)
        net_optimizer = torch.optim.SGD(net.parameters(), lr=self.lr_net)
        syn_labels = state["labels"].view(k, ipc)
        has_bn = _has_batch_norm(net)
        batched = use_vmap(self.class_batching, context.device)
        total = 0.0
        for outer in range(state["outer_loop"]):
            if has_bn:
                _freeze_batch_norm_on_real(net, context)
            real_x, real_y = context.real_batch(self.batch_real)
            target = real_class_gradients(context.regularizer, loss_fn, params, real_x, real_y, batched)

            latent = state["latent"].detach().requires_grad_(True)
            syn = (latent * std + mean).view(k, ipc, *latent.shape[1:])
            syn_grads = synthetic_class_gradients(loss_fn, params, syn, syn_labels, batched)
            loss = layerwise_distance(target, syn_grads)
            (g_latent,) = torch.autograd.grad(loss, latent)
            loss = loss.detach()
            with torch.no_grad():
                momentum = state["momentum"].mul_(self.momentum_img).add_(g_latent)
                state["latent"] = self._project(latent.detach() - self.lr_img * momentum, mean, std)
            total += loss.item()
            if has_bn:
                net.train()
            if outer == state["outer_loop"] - 1:
                break
            self._train_on_synthetic(net, net_optimizer, state, mean, std, state["inner_loop"])
        # DC logs the loss averaged over classes and outer steps.
        return {"match_loss": total / (k * state["outer_loop"])}

    def _train_on_synthetic(self, net, optimizer, state, mean, std, epochs: int) -> None:
        images = (state["latent"] * std + mean).detach()
        labels = state["labels"]
        n = images.shape[0]
        for _ in range(epochs):
            order = torch.randperm(n, device=images.device)
            for start in range(0, n, self.batch_train):
                idx = order[start:start + self.batch_train]
                loss = F.cross_entropy(net(images[idx]), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    def result(self, state: dict, context: DistillContext):
        mean, std = _stats(context)
        # Stored sets are [0, 1] images: with ``clamp`` this only undoes float rounding at the
        # bounds; without it (DC's unconstrained images) it is a single clip at the end.
        images = (state["latent"] * std + mean).detach().clamp(0.0, 1.0)
        return images.contiguous(), state["labels"].clone()


def _freeze_batch_norm_on_real(net: nn.Module, context: DistillContext) -> None:
    """DC's BatchNorm handling: set running statistics from a real batch, then use them fixed,
    so per-class gradients do not depend on batch composition (and vmap sees no in-place update)."""
    real_x, _ = context.real_batch(16)
    net.train()
    with torch.no_grad():
        net(real_x.flatten(0, 1))
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class RandomSubset:
    """Baseline: ``ipc`` real images per class drawn at random (no optimisation)."""

    iterations_needed = False

    def init(self, context: DistillContext) -> dict:
        ipc = context.ipc
        short = [c for c, ix in enumerate(context.class_indices) if len(ix) < ipc]
        if short:
            raise RddError(f"random: classes {short} have fewer than {ipc} images")
        picks = torch.cat([ix[torch.randperm(len(ix), device=ix.device)[:ipc]] for ix in context.class_indices])
        return {"images": context.train.images[picks].clone(), "labels": context.train.labels[picks].clone()}

    def step(self, state: dict, context: DistillContext) -> dict[str, float]:
        return {}

    def result(self, state: dict, context: DistillContext):
        return state["images"], state["labels"]


@hookimpl
def rdd_register_distillers(register):
    register("gm", GradientMatching, "DC gradient matching; the real gradient includes the regularizer")
    register("random", RandomSubset, "random real images per class (baseline)")
