"""Gradient computation and layer-wise distances shared by gradient-matching distillers.

Per-class gradients come from a pure loss function, so the classes can be batched with
``torch.func.vmap`` (one launch per layer for all classes: the fast path on a GPU, where DC's tiny
per-class convolutions are launch-bound) or looped (on a CPU, where vmap's batched convolutions
are slower than a loop: docs/decisions.md, benchmarks/bench_class_batching.py).
``auto`` picks by device.

vmap holds every class's activations at once, so the classes can also go through vmap a chunk at
a time (``chunk``): the same gradients, with memory bounded by one chunk. On CUDA the chunk can be
sized from the device's free memory and one class's measured cost (:func:`cuda_class_chunk`).
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from ..errors import RddError
from ..randomness import forked_rng
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


# ``draws(k)``: a context manager under which the k-th class of a call draws its random numbers
# (the distillers seed them by the class's work key); None draws from the global stream as it stands.
Draws = Callable[[int], ContextManager] | None


def map_classes(fn, params: dict, images: torch.Tensor, labels: torch.Tensor, batched: bool,
                chunk: int | None = None, draws: Draws = None) -> Gradients:
    """``fn(params, images[k], labels[k])`` for every class k, results stacked on a leading K axis.

    ``batched``: through vmap, ``chunk`` classes per call (``None``: all of them); else a loop.
    ``draws(k)`` is entered around class k's call in a loop and around each vmap call at its first
    class: a regularizer drawing random numbers (PGD's random start) then draws what its class's key
    says when looped, and what the chunk's first class's key says under vmap.
    """
    draws = draws or (lambda k: contextlib.nullcontext())
    if not batched:
        per_class = []
        for k in range(images.shape[0]):
            with draws(k):
                per_class.append(fn(params, images[k], labels[k]))
        return _stack_classes(per_class)
    # "different": a regularizer drawing random numbers draws per class.
    mapped = vmap(fn, in_dims=(None, 0, 0), randomness="different")
    classes = images.shape[0]
    if chunk is None or chunk >= classes:  # one call: exactly the unchunked path, random draws included
        with draws(0):
            return mapped(params, images, labels)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    parts = []
    for start in range(0, classes, chunk):
        with draws(start):
            parts.append(mapped(params, images[start:start + chunk], labels[start:start + chunk]))
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def _stack_classes(per_class: list[Gradients]) -> Gradients:
    return {name: torch.stack([g[name] for g in per_class]) for name in per_class[0]}


def real_class_gradients(regularizer: Regularizer, loss_fn: LossFn, params: dict, images: torch.Tensor,
                         labels: torch.Tensor, batched: bool = True, chunk: int | None = None,
                         draws: Draws = None) -> Gradients:
    """Matching targets for every class: images (K, B, C, H, W) -> grads with a leading K axis."""
    detached = {k: v.detach() for k, v in params.items()}

    def target(p, x, y):
        return regularizer.parameter_gradient(loss_fn, p, x, y)

    return {k: g.detach() for k, g in map_classes(target, detached, images, labels, batched, chunk, draws).items()}


def synthetic_class_gradients(loss_fn: LossFn, params: dict, images: torch.Tensor, labels: torch.Tensor,
                              batched: bool = True, chunk: int | None = None, draws: Draws = None) -> Gradients:
    """Per-class gradients of the synthetic batch, differentiable w.r.t. ``images``."""
    detached = {k: v.detach() for k, v in params.items()}
    return map_classes(grad(loss_fn), detached, images, labels, batched, chunk, draws)


# The share of the device's available memory one chunk may take: the rest absorbs the allocator's
# fragmentation and what the synthetic side and later steps allocate beside it.
MEMORY_HEADROOM = 0.8


def classes_that_fit(budget_bytes: int, per_class_bytes: int, classes: int) -> int:
    """Classes one vmap call may take within ``budget_bytes``: all of them at most, 0 when not even
    one fits."""
    if per_class_bytes <= 0:
        return classes
    return max(0, min(classes, budget_bytes // per_class_bytes))


def cuda_class_chunk(regularizer: Regularizer, loss_fn: LossFn, params: dict, images: torch.Tensor,
                     labels: torch.Tensor) -> int:
    """Classes per vmap call on CUDA: the device's available memory over the peak cost of one
    class's real-side gradient, measured by computing it; 0 when one class does not fit."""
    device = images.device
    # Forked: the measuring draws nothing from the run's stream, so a resumed run, which measures
    # again, stays equal to an uninterrupted one.
    try:
        with forked_rng(device):
            per_class = _cuda_peak_bytes(
                lambda: real_class_gradients(regularizer, loss_fn, params, images[:1], labels[:1]), device)
    except torch.cuda.OutOfMemoryError:
        return 0  # not even one class under vmap
    budget = int(_cuda_available_bytes(device) * MEMORY_HEADROOM)
    return classes_that_fit(budget, per_class, images.shape[0])


def _cuda_peak_bytes(fn, device: torch.device) -> int:
    """What ``fn`` adds to the allocated memory at its peak."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _cuda_available_bytes(device: torch.device) -> int:
    """Free device memory plus what PyTorch's allocator holds unused (free to it, not to the driver)."""
    free, _total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def _class_name(part: object) -> str:
    return type(part).__name__


COMPOSABLE = ("it must be built from torch.func-composable operations "
              "(no .item(), no Python branching on tensor values)")


def check_regularizer_vmaps(regularizer: Regularizer, loss_fn: LossFn, params: dict, images: torch.Tensor,
                            labels: torch.Tensor, name_of: Callable[[object], str] = _class_name) -> None:
    """Raise an RddError naming the regularizer (``name_of(regularizer)``) if its gradients fail
    under ``torch.func.vmap`` over the classes of ``images`` (K, B, C, H, W).

    Only the regularizer is judged: when the plain gradient fails under vmap as well, the backbone
    is at fault, and this check passes (a looped run does not need vmap).
    """
    error = _error_of(lambda: real_class_gradients(regularizer, loss_fn, params, images, labels))
    if error is None:
        return
    if _error_of(lambda: synthetic_class_gradients(loss_fn, params, images, labels)) is not None:
        return  # the backbone's fault: not the regularizer's to report
    raise RddError(f"regularizer {name_of(regularizer)!r} fails under torch.func.vmap, which batches the "
                   f"classes on CUDA ({_first_sentence(error)}): {COMPOSABLE}") from error


def _error_of(fn) -> Exception | None:
    try:
        fn()
    except RddError:  # the part's own message, already meant for the user
        raise
    except Exception as error:
        return error
    return None


def _first_sentence(error: Exception) -> str:
    """torch's reason, kept to its first sentence: the message must stay one line."""
    lines = str(error).strip().splitlines()
    return lines[0].split(". ")[0].rstrip(".") if lines else type(error).__name__


def class_distances(real: Gradients, synthetic: Gradients) -> torch.Tensor:
    """DC's distance per class (K,): for each weight, Σ over output units of (1 - cos) between the
    flattened gradients, summed over the weights. 1-D parameters (biases, norm scales) are skipped,
    as in DC. Class k's entry depends on class k's gradients only, so classes computed on different
    ranks give the entries one rank gives.

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
        term = (1.0 - cos).sum(-1)
        total = term if total is None else total + term
    if total is None:
        raise ValueError("no parameter with 2 or more dimensions to match")
    return total


def layerwise_distance(real: Gradients, synthetic: Gradients) -> torch.Tensor:
    """DC's distance summed over classes, in class order (see :func:`class_distances`)."""
    return class_distances(real, synthetic).sum()


def matching_losses(regularizer: Regularizer, loss_fn: LossFn, params: dict, real_images: torch.Tensor,
                    real_labels: torch.Tensor, syn_images: torch.Tensor, syn_labels: torch.Tensor,
                    batched: bool, chunk: int | None = None, real_draws: Draws = None,
                    syn_draws: Draws = None) -> torch.Tensor:
    """The gradient-matching objective per class (K,), differentiable w.r.t. ``syn_images``; its sum
    is DC's loss.

    real (K, B, C, H, W), synthetic (K, IPC, C, H, W); the real side goes through ``regularizer``.
    Each side's random draws (a regularizer's random start, a backbone's dropout) are made under
    ``real_draws`` and ``syn_draws`` (see :func:`map_classes`).
    ``chunk`` bounds the classes per vmap call on both sides. It bounds the real side's memory;
    the synthetic side keeps every class's graph for the backward pass, as the loop does.
    """
    target = real_class_gradients(regularizer, loss_fn, params, real_images, real_labels, batched, chunk, real_draws)
    synthetic = synthetic_class_gradients(loss_fn, params, syn_images, syn_labels, batched, chunk, syn_draws)
    return class_distances(target, synthetic)
