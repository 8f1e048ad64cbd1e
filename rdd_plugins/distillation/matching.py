"""Gradient computation and layer-wise distances shared by gradient-matching distillers.

Per-class gradients come from a pure loss function, so the classes can be batched with
``torch.func.vmap`` (one launch per layer for all classes: the fast path on a GPU, where DC's tiny
per-class convolutions are launch-bound) or looped (on a CPU, where vmap's batched convolutions
are slower than a loop: docs/decisions.md, benchmarks/bench_class_batching.py).
``auto`` picks by device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..errors import RddError
from .autodiff import grad
from .contract import Gradients, LossFn, Regularizer


def make_loss_fn(model: nn.Module, buffers: dict[str, torch.Tensor] | None = None) -> LossFn:
    """Cross-entropy of ``model`` as a pure function of (params, images, labels).

    ``buffers`` (default: the model's own) are the BatchNorm statistics the passes read and, in
    train mode, update in place.
    """
    buffers = dict(model.named_buffers()) if buffers is None else buffers

    def loss_fn(params: dict, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (params, buffers), (images,))
        return F.cross_entropy(logits, labels)

    return loss_fn


def trainable_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


CLASS_BATCHING = ("auto", "vmap", "loop")


def use_vmap(class_batching: str, device: torch.device) -> bool:
    if class_batching not in CLASS_BATCHING:
        raise RddError(f"class_batching must be one of {CLASS_BATCHING}, got {class_batching!r}")
    return class_batching == "vmap" or (class_batching == "auto" and device.type == "cuda")


def map_classes(fn, params: dict, images: torch.Tensor, labels: torch.Tensor, batched: bool) -> Gradients:
    """``fn(params, images[k], labels[k])`` for every class k, results stacked on a leading K axis."""
    if batched:
        # "different": a regularizer drawing random numbers (PGD's random start) draws per class.
        return vmap(fn, in_dims=(None, 0, 0), randomness="different")(params, images, labels)
    per_class = [fn(params, images[k], labels[k]) for k in range(images.shape[0])]
    return {name: torch.stack([g[name] for g in per_class]) for name in per_class[0]}


def real_class_gradients(regularizer: Regularizer, loss_fn: LossFn, params: dict,
                         images: torch.Tensor, labels: torch.Tensor, batched: bool = True) -> Gradients:
    """Matching targets for every class: images (K, B, C, H, W) -> grads with a leading K axis."""
    detached = {k: v.detach() for k, v in params.items()}

    def target(p, x, y):
        return regularizer.parameter_gradient(loss_fn, p, x, y)

    return {k: g.detach() for k, g in map_classes(target, detached, images, labels, batched).items()}


def synthetic_class_gradients(loss_fn: LossFn, params: dict, images: torch.Tensor,
                              labels: torch.Tensor, batched: bool = True) -> Gradients:
    """Per-class gradients of the synthetic batch, differentiable w.r.t. ``images``."""
    detached = {k: v.detach() for k, v in params.items()}
    return map_classes(grad(loss_fn), detached, images, labels, batched)


def layerwise_distance(real: Gradients, synthetic: Gradients) -> torch.Tensor:
    """DC's distance: for each weight, Σ over output units of (1 - cos) between the flattened
    gradients, summed over classes. 1-D parameters (biases, norm scales) are skipped, as in DC.

    Tensors carry a leading class dimension K: shape (K, out, ...) -> (K, out, rest).
    """
    total = None
    for name, g_real in real.items():
        if g_real.dim() <= 2:  # (K, out): a bias or norm parameter
            continue
        g_syn = synthetic[name]
        k, out = g_real.shape[:2]
        a = g_real.reshape(k, out, -1)
        b = g_syn.reshape(k, out, -1)
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6)
        term = (1.0 - cos).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no parameter with 2 or more dimensions to match")
    return total


def matching_loss(regularizer: Regularizer, loss_fn: LossFn, params: dict, real_images: torch.Tensor,
                  real_labels: torch.Tensor, syn_images: torch.Tensor, syn_labels: torch.Tensor,
                  batched: bool) -> torch.Tensor:
    """One gradient-matching objective over all classes, differentiable w.r.t. ``syn_images``.

    real (K, B, C, H, W), synthetic (K, IPC, C, H, W); the real side goes through ``regularizer``.
    """
    target = real_class_gradients(regularizer, loss_fn, params, real_images, real_labels, batched)
    return layerwise_distance(target, synthetic_class_gradients(loss_fn, params, syn_images, syn_labels, batched))
