"""``sre2l``: squeeze, recover, relabel (Yin et al., NeurIPS 2023); with the run's regularizer on
the teacher's training loss it is GUARD's published pipeline (``--regularizer curvature``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...crops import apply_crop_boxes, sample_crop_boxes
from ...distillation.contract import DistillContext
from ...distillation.matching import make_loss_fn, trainable_params
from ...errors import RddError
from ...progress import bar, context_progress
from .common import class_major_labels, dataset_stats, project_to_pixels


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def random_resized_crop(images: torch.Tensor, min_scale: float) -> torch.Tensor:
    """One random crop (area fraction in [min_scale, 1], aspect ratio in [3/4, 4/3]) of the whole
    batch, resized back with bilinear interpolation, then a horizontal flip with probability 1/2:
    SRe2L's recover augmentation, differentiable with respect to the images. Draws from torch's
    global generator, so a seeded run (and its resume) repeats it."""
    h, w = images.shape[-2:]
    area = h * w
    for _ in range(10):  # as torchvision's RandomResizedCrop: a few tries, then the whole image
        scale = min_scale + (1 - min_scale) * float(torch.rand(()))
        ratio = float(torch.exp(torch.empty(()).uniform_(math.log(3 / 4), math.log(4 / 3))))
        cw, ch = round(math.sqrt(scale * area * ratio)), round(math.sqrt(scale * area / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, ()))
            left = int(torch.randint(0, w - cw + 1, ()))
            break
    else:
        top, left, ch, cw = 0, 0, h, w
    out = images[:, :, top:top + ch, left:left + cw]
    if (ch, cw) != (h, w):
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    if float(torch.rand(())) < 0.5:
        out = out.flip(-1)
    return out


class SqueezeRecoverRelabel:
    """Squeeze: train a teacher on the real data for ``teacher_epochs`` (SGD, momentum 0.9, BatchNorm
    in train mode), its loss regularized by the run's regularizer (``none``: SRe2L; ``curvature`` /
    ``cure``: GUARD).
    Recover: each iteration is one Adam step (lr 0.25, betas 0.5/0.9, SRe2L's) on all synthetic
    images, from noise, minimising cross-entropy of the teacher plus ``r_bn`` × the distance of the
    images' per-layer BatchNorm statistics to the teacher's running statistics; after each step
    the images are projected onto [0, 1] (SRe2L's clip).
    Relabel: the teacher's logits on the final images become soft labels; evaluation then trains
    with knowledge distillation on them (``evaluate.kd_temperature``). With ``relabel_crops`` = R > 0
    (default 50) it is SRe2L/FKD's per-crop relabelling: R random-resized-crop views per image (area
    fraction in [``relabel_min_scale``, 1], SRe2L's 0.08 by default; flips), each with the teacher's
    logits on that view; evaluation trains epoch e on view e mod R. ``relabel_crops = 0``: one label
    per image, the teacher's on the whole image. The defaults are SRe2L's: per-crop views raised
    clean accuracy on Fashion-MNIST and more views did not, while R = 50 keeps the stored labels
    small (N x R x classes); see docs/decisions.md. The views are drawn from a generator seeded once
    at init, so they do not depend on when the result is taken (resume stays exact).
    ``crop_min_scale`` > 0 applies SRe2L's random-resized-crop and flip to the synthetic batch
    before the teacher at every recover step. The default is 0 (none), because crops lowered clean
    accuracy on Fashion-MNIST at a CPU budget; see docs/decisions.md. The backbone needs BatchNorm
    (``--set backbone.params.norm="batch"`` for convnet).
    """

    iterations_needed = True

    def __init__(self, *, teacher_epochs: int = 2, teacher_lr: float = 0.01, batch_size: int = 256,
                 lr_img: float = 0.25, r_bn: float = 0.01, crop_min_scale: float = 0.0,
                 relabel_crops: int = 50, relabel_min_scale: float = 0.08) -> None:
        if teacher_epochs < 1 or teacher_lr <= 0 or batch_size < 1 or lr_img <= 0 or r_bn < 0:
            raise RddError("sre2l: teacher_epochs >= 1, teacher_lr > 0, batch_size >= 1, lr_img > 0, r_bn >= 0")
        if not 0.0 <= crop_min_scale <= 1.0:
            raise RddError(f"sre2l: crop_min_scale must be in [0, 1] (0 = no crop), got {crop_min_scale}")
        if isinstance(relabel_crops, bool) or not isinstance(relabel_crops, int) or relabel_crops < 0 \
                or not 0.0 < relabel_min_scale <= 1.0:
            raise RddError(f"sre2l: relabel_crops must be >= 0 (0 = one label per image) and relabel_min_scale "
                           f"in (0, 1], got {relabel_crops} and {relabel_min_scale}")
        self.teacher_epochs, self.teacher_lr, self.batch_size = teacher_epochs, teacher_lr, batch_size
        self.lr_img, self.r_bn, self.crop_min_scale = lr_img, r_bn, crop_min_scale
        self.relabel_crops, self.relabel_min_scale = relabel_crops, float(relabel_min_scale)

    def _teacher(self, state: dict, context: DistillContext) -> nn.Module:
        net = context.make_model()
        net.load_state_dict({k[len("teacher."):]: v for k, v in state.items() if k.startswith("teacher.")})
        return net.eval()

    def init(self, context: DistillContext) -> dict:
        teacher = context.make_model()
        if not _batch_norms(teacher):
            raise RddError("sre2l needs a backbone with BatchNorm, e.g. --set backbone.params.norm=\"batch\"")
        self._squeeze(teacher, context)
        k, ipc = context.num_classes, context.ipc
        c, (h, w) = context.train.channels, context.train.image_size
        mean, std = dataset_stats(context)
        latent = project_to_pixels(torch.randn(k * ipc, c, h, w, device=context.device), mean, std)
        state = {f"teacher.{name}": t.detach().clone() for name, t in teacher.state_dict().items()}
        state.update(latent=latent, adam_m=torch.zeros_like(latent), adam_v=torch.zeros_like(latent), adam_t=0,
                     labels=class_major_labels(k, ipc, context.device))
        if self.relabel_crops:  # drawn only then, so runs without crops keep their random stream
            state["relabel_seed"] = int(torch.randint(0, 2**62, ()))
        return state

    def _squeeze(self, teacher: nn.Module, context: DistillContext) -> None:
        images, labels = context.train.images, context.train.labels
        params = trainable_params(teacher)
        optimizer = torch.optim.SGD(params.values(), lr=self.teacher_lr, momentum=0.9, weight_decay=5e-4)
        teacher.train()  # batch statistics, as SRe2L trains its teacher
        batches_per_epoch = math.ceil(images.shape[0] / self.batch_size)
        # Batches rather than epochs: an epoch on a full dataset takes minutes with a regularizer.
        with bar(total=self.teacher_epochs * batches_per_epoch, desc="sre2l teacher", unit="batch",
                 enabled=context_progress(context)) as pbar:
            for _ in range(self.teacher_epochs):
                order = torch.randperm(images.shape[0], device=images.device)
                for start in range(0, images.shape[0], self.batch_size):
                    idx = order[start:start + self.batch_size]
                    # The regularizer may run the loss several times (x, x + z, PGD steps): each pass
                    # updates a copy of the running statistics, and one ordinary forward on the clean
                    # batch then updates the teacher's own, once, as a plain training step would.
                    copies = {name: b.clone() for name, b in teacher.named_buffers()}
                    grads = context.regularizer.parameter_gradient(make_loss_fn(teacher, copies),
                                                                    {n: p.detach() for n, p in params.items()},
                                                                    images[idx], labels[idx])
                    with torch.no_grad():
                        teacher(images[idx])
                    for name, p in params.items():
                        p.grad = grads[name]
                    optimizer.step()
                    pbar.update(1)

    def step(self, state: dict, context: DistillContext) -> dict[str, float]:
        teacher = self._teacher(state, context)
        for p in teacher.parameters():
            p.requires_grad_(False)
        stats = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: stats.append((mod, inp[0])))
                 for m in _batch_norms(teacher)]
        mean, std = dataset_stats(context)
        latent = state["latent"].detach().requires_grad_(True)
        # No clamp here: it would give every pixel outside [0, 1] a zero gradient, and Adam would
        # never move it again. The latent is projected onto the pixel box after each step instead
        # (SRe2L's clip), so the teacher only ever sees [0, 1] images.
        images = latent * std + mean
        if self.crop_min_scale > 0:
            images = random_resized_crop(images, self.crop_min_scale)
        try:
            logits = teacher(images)
        finally:
            for hook in hooks:
                hook.remove()
        ce = F.cross_entropy(logits, state["labels"])
        bn = sum(torch.norm(x.mean(dim=(0, 2, 3)) - m.running_mean, 2)
                 + torch.norm(x.var(dim=(0, 2, 3), unbiased=False) - m.running_var, 2) for m, x in stats)
        loss = ce + self.r_bn * bn
        (g,) = torch.autograd.grad(loss, latent)
        with torch.no_grad():  # Adam, betas (0.5, 0.9) as SRe2L's recover
            state["adam_t"] += 1
            t = state["adam_t"]
            state["adam_m"].mul_(0.5).add_(g, alpha=0.5)
            state["adam_v"].mul_(0.9).addcmul_(g, g, value=0.1)
            m_hat = state["adam_m"] / (1 - 0.5 ** t)
            v_hat = state["adam_v"] / (1 - 0.9 ** t)
            stepped = latent.detach() - self.lr_img * m_hat / (v_hat.sqrt() + 1e-8)
            state["latent"] = project_to_pixels(stepped, mean, std)
        return {"recover_loss": loss.item(), "ce": ce.item()}

    def preview(self, state: dict, context: DistillContext):
        """The images so far without relabelling them (for plugins watching the run)."""
        mean, std = dataset_stats(context)
        return (state["latent"] * std + mean).clamp(0, 1).contiguous(), state["labels"].clone()

    def result(self, state: dict, context: DistillContext):
        images, labels = self.preview(state, context)
        teacher = self._teacher(state, context)
        if not self.relabel_crops:
            with torch.no_grad():
                soft = teacher(images)
            return images, labels, soft
        if "relabel_seed" not in state:
            raise RddError("this sre2l checkpoint was written before per-crop relabelling existed; "
                           "run it again from the start (rdd distill without --resume)")
        generator = torch.Generator().manual_seed(int(state["relabel_seed"]))
        boxes = sample_crop_boxes(images.shape[0], self.relabel_crops, self.relabel_min_scale,
                                  tuple(images.shape[-2:]), generator).to(images.device)
        with torch.no_grad():
            soft = torch.stack([teacher(apply_crop_boxes(images, boxes[:, v])) for v in range(self.relabel_crops)],
                               dim=1)
        return images, labels, soft, boxes
