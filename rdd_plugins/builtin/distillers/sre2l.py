"""``sre2l``: squeeze, recover, relabel (Yin et al., NeurIPS 2023); with the run's regularizer on
the teacher's training loss it is GUARD's published pipeline (``--regularizer curvature``)."""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ...crops import apply_crop_boxes, sample_crop_boxes
from ...distillation.autodiff import grad
from ...distillation.contract import DistillContext
from ...distillation.matching import make_loss_fn, trainable_params
from ...distributed.work import dealt_to, merge_disjoint, replica_checks, same_everywhere
from ...errors import RddError
from ...progress import bar, context_progress
from ..regularizers import NoRegularizer
from .common import class_major_labels, dataset_stats, project_to_pixels


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


REGULARIZER_STATISTICS = ("running", "batch")


@contextmanager
def _eval_mode(model: nn.Module):
    """``model`` in eval mode (BatchNorm reads its running statistics) for the block, then as it was."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def random_resized_crop(images: torch.Tensor, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """One random crop (area fraction in [min_scale, 1], aspect ratio in [3/4, 4/3]) of the whole
    batch, resized back with bilinear interpolation, then a horizontal flip with probability 1/2:
    SRe2L's recover augmentation, differentiable with respect to the images. Draws only from
    ``generator`` (CPU), so the crop is its work key's, whichever rank takes it and on a resume."""
    h, w = images.shape[-2:]
    area = h * w
    for _ in range(10):  # as torchvision's RandomResizedCrop: a few tries, then the whole image
        scale = min_scale + (1 - min_scale) * float(torch.rand((), generator=generator))
        ratio = float(torch.exp(torch.empty(()).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)))
        cw, ch = round(math.sqrt(scale * area * ratio)), round(math.sqrt(scale * area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (), generator=generator))
            break
    else:
        top, left, ch, cw = 0, 0, h, w
    out = images[:, :, top:top + ch, left:left + cw]
    if (ch, cw) != (h, w):
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    if float(torch.rand((), generator=generator)) < 0.5:
        out = out.flip(-1)
    return out


def recover_layout(num_classes: int, ipc: int, batch: int) -> list[torch.Tensor]:
    """The recover batches, in batch order: each the (CPU, ascending) indices of its images among the
    class-major synthetic images (image c * ipc + j is class c's j-th).

    With ``num_classes >= batch`` a batch is a block of ``batch`` classes at one ipc index j (SRe2L's
    layout: classes [kB, (k+1)B) at j; the last block may be smaller), j-major; otherwise a batch
    holds every class at ipc indices [j0, j0 + batch // num_classes). A function of the set's shape
    only, never of the number of ranks, so each batch's BatchNorm statistics are the same whoever
    computes it."""
    k = num_classes
    if k >= batch:
        blocks = [range(start, min(start + batch, k)) for start in range(0, k, batch)]
        return [torch.tensor([c * ipc + j for c in block]) for j in range(ipc) for block in blocks]
    per = batch // k
    return [torch.tensor([c * ipc + j for c in range(k) for j in range(j0, min(j0 + per, ipc))])
            for j0 in range(0, ipc, per)]


class SqueezeRecoverRelabel:
    """Squeeze: train a teacher on the real data for ``teacher_epochs`` (SGD, momentum 0.9, BatchNorm
    in train mode), its loss regularized by the run's regularizer (``none``: SRe2L; ``curvature`` /
    ``cure``: GUARD). ``regularizer_statistics = "batch"`` (default) runs every pass of the
    regularizer with its batch's BatchNorm statistics, as the training loss. ``"running"`` is GUARD's
    released squeeze: the regularizer's term (its gradient less the plain loss's: for ``curvature``
    z, ℓ(x) and ℓ(x + z)) in eval mode, with the running statistics. It is not the default because a
    teacher trained from scratch for a short budget learns to be flat in eval mode only, and the
    recover step reads it in eval mode (docs/decisions.md).
    Recover: each iteration is one Adam step (lr 0.25, betas 0.5/0.9, SRe2L's) on all synthetic
    images, from noise, minimising cross-entropy of the teacher plus ``r_bn`` × the distance of the
    images' per-layer BatchNorm statistics to the teacher's running statistics; after each step
    the images are projected onto [0, 1] (SRe2L's clip). The statistics are those of a recover
    batch of ``recover_batch`` images (default 100, SRe2L's ImageNet batch): with at least that many
    classes a batch is ``recover_batch`` classes at one image index, as SRe2L's; with fewer it is
    every class at ``recover_batch // classes`` image indices (Fashion-MNIST at IPC 10: one batch of
    all 100 images). The layout is fixed by the set's shape, so the loss (and the set) does not
    depend on the number of ranks, which share the batches out round-robin.
    Relabel: the teacher's logits on the final images become soft labels; evaluation then trains
    with knowledge distillation on them (``evaluate.kd_temperature``). With ``relabel_crops`` = R > 0
    (default 50) it is SRe2L/FKD's per-crop relabelling: R random-resized-crop views per image (area
    fraction in [``relabel_min_scale``, 1], SRe2L's 0.08 by default; flips), each with the teacher's
    logits on that view; evaluation trains epoch e on view e mod R. ``relabel_crops = 0``: one label
    per image, the teacher's on the whole image. The defaults are SRe2L's: per-crop views raised
    clean accuracy on Fashion-MNIST and more views did not, while R = 50 keeps the stored labels
    small (N x R x classes); see docs/decisions.md. View v's boxes are the run's ``("relabel", v)``
    draw, so they do not depend on when the result is taken (resume stays exact) nor on which rank
    labels the view (ranks share the views out).
    ``crop_min_scale`` > 0 applies SRe2L's random-resized-crop and flip to each recover batch
    before the teacher at every recover step. The default is 0 (none), because crops lowered clean
    accuracy on Fashion-MNIST at a CPU budget; see docs/decisions.md. The backbone needs BatchNorm
    (``--set backbone.params.norm="batch"`` for convnet).

    On several ranks every rank trains the same teacher (keyed draws, no communication): sharing its
    batches out as DDP does would average gradients in a rank-dependent order and give each rank its
    own BatchNorm batch statistics, so the teacher, and the set, would depend on the number of ranks.
    ``teacher_shards`` = S > 1 shares it out all the same: each teacher batch is cut into S fixed
    slices, each with its own BatchNorm statistics and regularizer penalty (ghost batches: a
    different teacher than S = 1, the same for any number of ranks at a given S); ranks compute the
    slices' gradients round-robin, every rank sums all of them in slice order, weighted by size.
    """

    iterations_needed = True

    def __init__(self, *, teacher_epochs: int = 2, teacher_lr: float = 0.01, batch_size: int = 256,
                 lr_img: float = 0.25, r_bn: float = 0.01, crop_min_scale: float = 0.0,
                 relabel_crops: int = 50, relabel_min_scale: float = 0.08, recover_batch: int = 100,
                 teacher_shards: int = 1, regularizer_statistics: str = "batch") -> None:
        if teacher_epochs < 1 or teacher_lr <= 0 or batch_size < 1 or lr_img <= 0 or r_bn < 0:
            raise RddError("sre2l: teacher_epochs >= 1, teacher_lr > 0, batch_size >= 1, lr_img > 0, r_bn >= 0")
        if not 0.0 <= crop_min_scale <= 1.0:
            raise RddError(f"sre2l: crop_min_scale must be in [0, 1] (0 = no crop), got {crop_min_scale}")
        if isinstance(relabel_crops, bool) or not isinstance(relabel_crops, int) or relabel_crops < 0 \
                or not 0.0 < relabel_min_scale <= 1.0:
            raise RddError(f"sre2l: relabel_crops must be >= 0 (0 = one label per image) and relabel_min_scale "
                           f"in (0, 1], got {relabel_crops} and {relabel_min_scale}")
        for name, value in (("recover_batch", recover_batch), ("teacher_shards", teacher_shards)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RddError(f"sre2l: {name} must be an integer >= 1, got {value!r}")
        self.teacher_epochs, self.teacher_lr, self.batch_size = teacher_epochs, teacher_lr, batch_size
        self.lr_img, self.r_bn, self.crop_min_scale = lr_img, r_bn, crop_min_scale
        self.relabel_crops, self.relabel_min_scale = relabel_crops, float(relabel_min_scale)
        if regularizer_statistics not in REGULARIZER_STATISTICS:
            raise RddError(f"sre2l: regularizer_statistics must be one of {REGULARIZER_STATISTICS}, "
                           f"got {regularizer_statistics!r}")
        self.recover_batch, self.teacher_shards = recover_batch, teacher_shards
        self.regularizer_statistics = regularizer_statistics

    def _teacher(self, state: dict, context: DistillContext) -> nn.Module:
        net = context.make_model()
        net.load_state_dict({k[len("teacher."):]: v for k, v in state.items() if k.startswith("teacher.")})
        return net.eval()

    def _layout(self, context: DistillContext) -> list[torch.Tensor]:
        return recover_layout(context.num_classes, context.ipc, self.recover_batch)

    # -- squeeze ---------------------------------------------------------------------------------------

    def init(self, context: DistillContext) -> dict:
        teacher = context.fresh_model("teacher")
        if not _batch_norms(teacher):
            raise RddError("sre2l needs a backbone with BatchNorm, e.g. --set backbone.params.norm=\"batch\"")
        self._squeeze(teacher, context)
        if replica_checks(context.world):
            same_everywhere(list(teacher.state_dict().values()), "sre2l's teacher", context.world)
        k, ipc = context.num_classes, context.ipc
        c, (h, w) = context.train.channels, context.train.image_size
        # each recover batch's noise is its own draw, as each is its own optimisation in SRe2L
        noise = torch.empty(k * ipc, c, h, w)
        for b, idx in enumerate(self._layout(context)):
            noise[idx] = torch.randn(len(idx), c, h, w, generator=context.generator("recover-init", b))
        mean, std = dataset_stats(context)
        latent = project_to_pixels(noise.to(context.device), mean, std)
        state = {f"teacher.{name}": t.detach().clone() for name, t in teacher.state_dict().items()}
        state.update(latent=latent, adam_m=torch.zeros_like(latent), adam_v=torch.zeros_like(latent), adam_t=0,
                     labels=class_major_labels(k, ipc, context.device))
        return state

    def _squeeze(self, teacher: nn.Module, context: DistillContext) -> None:
        """The same on every rank: the same batches (the run's ``("squeeze", epoch)`` shuffle), the
        regularizer's draws keyed by (epoch, batch, slice), the same gradient (:meth:`_teacher_gradient`)."""
        images = context.train.images
        params = trainable_params(teacher)
        optimizer = torch.optim.SGD(params.values(), lr=self.teacher_lr, momentum=0.9, weight_decay=5e-4)
        teacher.train()  # batch statistics, as SRe2L trains its teacher
        batches_per_epoch = math.ceil(images.shape[0] / self.batch_size)
        # Batches rather than epochs: an epoch on a full dataset takes minutes with a regularizer.
        with bar(total=self.teacher_epochs * batches_per_epoch, desc="sre2l teacher", unit="batch",
                 enabled=context_progress(context)) as pbar:
            for epoch in range(self.teacher_epochs):
                order = torch.randperm(images.shape[0], generator=context.generator("squeeze", epoch))
                order = order.to(images.device)
                for batch, start in enumerate(range(0, images.shape[0], self.batch_size)):
                    # fixed slices of the batch (one: the whole batch), a function of S only
                    slices = [part for part in order[start:start + self.batch_size].tensor_split(self.teacher_shards)
                              if len(part)]
                    grads = self._teacher_gradient(teacher, params, slices, context, (epoch, batch))
                    # The regularizer may run the loss several times (x, x + z, PGD steps): each pass
                    # updated a copy of the running statistics, and one ordinary forward on each clean
                    # slice now updates the teacher's own, once, as a plain training step would.
                    with torch.no_grad():
                        for part in slices:
                            teacher(images[part])
                    for name, p in params.items():
                        p.grad = grads[name]
                    optimizer.step()
                    pbar.update(1)

    def _teacher_gradient(self, teacher: nn.Module, params: dict, slices: list[torch.Tensor],
                          context: DistillContext, key: tuple) -> dict[str, torch.Tensor]:
        """The regularized loss's parameter gradient on one teacher batch, the same on every rank.

        One slice: computed whole on every rank (replicated). Several: this rank's slices (dealt
        round-robin), placed in an (S, parameters) tensor and merged, so every rank holds every
        slice's gradient exactly as its owner computed it; the sum, weighted by slice size, runs in
        slice order on every rank."""
        images, labels = context.train.images, context.train.labels
        detached = {n: p.detach() for n, p in params.items()}

        regularizer = context.regularizer
        split = self.regularizer_statistics == "running" and not isinstance(regularizer, NoRegularizer)

        def gradient(s: int) -> dict[str, torch.Tensor]:
            x, y = images[slices[s]], labels[slices[s]]
            copies = {name: b.clone() for name, b in teacher.named_buffers()}  # the passes update these
            with context.seeded("squeeze-regularizer", *key, s):  # its random start, its noise
                if not split:
                    return regularizer.parameter_gradient(make_loss_fn(teacher, copies), detached, x, y)
                # GUARD's squeeze: the training loss with the batch's statistics, the regularizer's
                # term (its gradient less the plain loss's) with the running ones, read after this
                # batch's update as GUARD's eval-mode passes read them.
                g = grad(make_loss_fn(teacher, copies))(detached, x, y)
                with _eval_mode(teacher):
                    running = make_loss_fn(teacher, copies)
                    g_reg = regularizer.parameter_gradient(running, detached, x, y)
                    g_plain = grad(running)(detached, x, y)
                return {name: g[name] + (g_reg[name] - g_plain[name]) for name in g}

        if len(slices) == 1:
            return gradient(0)
        names = list(params)
        sizes = [p.numel() for p in params.values()]
        first = next(iter(params.values()))
        placed = torch.zeros(len(slices), sum(sizes), dtype=first.dtype, device=first.device)
        for s in dealt_to(len(slices), context.world):
            grads = gradient(s)
            placed[s] = torch.cat([grads[name].flatten() for name in names])
        if context.world.distributed:
            merge_disjoint(placed, context.world)
        n = sum(len(part) for part in slices)
        total = placed[0] * (len(slices[0]) / n)
        for s in range(1, len(slices)):
            total = total + placed[s] * (len(slices[s]) / n)
        return {name: g.view_as(params[name]) for name, g in zip(names, total.split(sizes))}

    # -- recover ---------------------------------------------------------------------------------------

    def step(self, state: dict, context: DistillContext) -> dict[str, float]:
        teacher = self._teacher(state, context)
        for p in teacher.parameters():
            p.requires_grad_(False)
        mean, std = dataset_stats(context)
        layout = self._layout(context)
        own = dealt_to(len(layout), context.world)
        # this rank's batches: their gradient rows (zero elsewhere) and their (loss, ce)
        grad = torch.zeros_like(state["latent"])
        losses = torch.zeros(2, len(layout), device=grad.device, dtype=grad.dtype)
        for b in own:
            idx = layout[b].to(grad.device)
            # No clamp here: it would give every pixel outside [0, 1] a zero gradient, and Adam would
            # never move it again. The latent is projected onto the pixel box after each step instead
            # (SRe2L's clip), so the teacher only ever sees [0, 1] images.
            latent = state["latent"][idx].detach().requires_grad_(True)
            loss, ce = self._recover_loss(teacher, latent * std + mean, state["labels"][idx], context, b)
            (grad[idx],) = torch.autograd.grad(loss, latent)
            losses[:, b] = torch.stack([loss.detach(), ce.detach()])
        # Adam, betas (0.5, 0.9) as SRe2L's recover: element-wise, so the whole tensor is stepped (the
        # same arithmetic at every place as on one process) and only this rank's rows are kept.
        with torch.no_grad():
            state["adam_t"] += 1
            t = state["adam_t"]
            state["adam_m"].mul_(0.5).add_(grad, alpha=0.5)
            state["adam_v"].mul_(0.9).addcmul_(grad, grad, value=0.1)
            m_hat = state["adam_m"] / (1 - 0.5 ** t)
            v_hat = state["adam_v"] / (1 - 0.9 ** t)
            stepped = state["latent"] - self.lr_img * m_hat / (v_hat.sqrt() + 1e-8)
            state["latent"] = project_to_pixels(stepped, mean, std)
            if context.world.distributed:  # every rank, even one owning all batches or none: a collective
                losses = self._merge_batches(state, layout, own, losses, context)
        loss, ce = losses.tolist()
        return {"recover_loss": sum(loss) / len(loss), "ce": sum(ce) / len(ce)}  # in batch order

    def _recover_loss(self, teacher: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      context: DistillContext, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the teacher plus r_bn x the BatchNorm statistics distance, on one recover batch."""
        if self.crop_min_scale > 0:
            images = random_resized_crop(images, self.crop_min_scale,
                                         context.generator("recover-crop", context.iteration, batch))
        stats = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: stats.append((mod, inp[0])))
                 for m in _batch_norms(teacher)]
        try:
            logits = teacher(images)
        finally:
            for hook in hooks:
                hook.remove()
        ce = F.cross_entropy(logits, labels)
        bn = sum(torch.norm(x.mean(dim=(0, 2, 3)) - m.running_mean, 2)
                 + torch.norm(x.var(dim=(0, 2, 3), unbiased=False) - m.running_var, 2) for m, x in stats)
        return ce + self.r_bn * bn, ce

    @staticmethod
    def _merge_batches(state: dict, layout: list[torch.Tensor], own: range, losses: torch.Tensor,
                       context: DistillContext) -> torch.Tensor:
        """Every rank's rows of latent, adam_m, adam_v and its batches' losses, on every rank: the
        others' places zeroed, then one all-reduce (exact: each place sums its owner's value and zeros)."""
        latent = state["latent"]
        mine = torch.zeros(latent.shape[0], dtype=torch.bool, device=latent.device)
        for b in own:
            mine[layout[b].to(latent.device)] = True
        parts = torch.stack([latent, state["adam_m"], state["adam_v"]])
        parts[:, ~mine] = 0
        merged = merge_disjoint(torch.cat([parts.flatten(), losses.flatten()]), context.world)
        n = parts.numel()
        # copies, not views of one buffer: a checkpoint of a view would save the whole buffer
        state["latent"], state["adam_m"], state["adam_v"] = (x.clone() for x in merged[:n].view_as(parts))
        return merged[n:].view_as(losses)

    # -- relabel ---------------------------------------------------------------------------------------

    def preview(self, state: dict, context: DistillContext):
        """The images so far without relabelling them (for plugins watching the run)."""
        mean, std = dataset_stats(context)
        return (state["latent"] * std + mean).clamp(0, 1).contiguous(), state["labels"].clone()

    def crop_boxes(self, n: int, image_size: tuple[int, int], context: DistillContext) -> torch.Tensor:
        """(n, relabel_crops, 5) relabel views; view v's boxes are the run's ``("relabel", v)`` draw."""
        return torch.stack([sample_crop_boxes(n, 1, self.relabel_min_scale, image_size,
                                              context.generator("relabel", v))[:, 0]
                            for v in range(self.relabel_crops)], dim=1)

    def result(self, state: dict, context: DistillContext):
        """On several ranks every rank must call this (the views' labels are merged across ranks)."""
        images, labels = self.preview(state, context)
        teacher = self._teacher(state, context)
        if not self.relabel_crops:  # one forward: every rank computes it
            with torch.no_grad():
                soft = teacher(images)
            return images, labels, soft
        boxes = self.crop_boxes(images.shape[0], tuple(images.shape[-2:]), context).to(images.device)
        # views dealt round-robin; the teacher is in eval mode, so a view's logits are the same
        # whichever rank computes them
        views = dealt_to(self.relabel_crops, context.world)
        soft = torch.zeros(images.shape[0], self.relabel_crops, context.num_classes, device=images.device)
        with torch.no_grad():
            for v in views:
                soft[:, v] = teacher(apply_crop_boxes(images, boxes[:, v]))
        if context.world.distributed:  # every rank, even one owning all views or none: a collective
            merge_disjoint(soft, context.world)
        return images, labels, soft, boxes
