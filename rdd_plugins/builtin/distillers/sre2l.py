"""``sre2l``: squeeze, recover, relabel (Yin et al., NeurIPS 2023); with the run's regularizer on
the teacher's training loss it is GUARD's published pipeline (``--regularizer curvature``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...distillation.contract import DistillContext
from ...distillation.matching import make_loss_fn, trainable_params
from ...errors import RddError
from .common import class_major_labels, dataset_stats


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class SqueezeRecoverRelabel:
    """Squeeze: train a teacher on the real data for ``teacher_epochs`` (SGD, momentum 0.9), its loss
    regularized by the run's regularizer (``none``: SRe2L; ``curvature`` / ``cure``: GUARD).
    Recover: each iteration is one Adam step (lr 0.25, betas 0.5/0.9, SRe2L's) on all synthetic
    images, from noise, minimising cross-entropy of the teacher plus ``r_bn`` × the distance of the
    images' per-layer BatchNorm statistics to the teacher's running statistics.
    Relabel: the teacher's logits on the final images become soft labels; evaluation then trains
    with knowledge distillation on them (``evaluate.kd_temperature``).
    The backbone needs BatchNorm (``--set backbone.params.norm="batch"`` for convnet). Left out
    against SRe2L's ImageNet recipe: random-resized-crop during recover and per-crop relabelling.
    """

    iterations_needed = True

    def __init__(self, *, teacher_epochs: int = 2, teacher_lr: float = 0.01, batch_size: int = 256,
                 lr_img: float = 0.25, r_bn: float = 0.01) -> None:
        if teacher_epochs < 1 or teacher_lr <= 0 or batch_size < 1 or lr_img <= 0 or r_bn < 0:
            raise RddError("sre2l: teacher_epochs >= 1, teacher_lr > 0, batch_size >= 1, lr_img > 0, r_bn >= 0")
        self.teacher_epochs, self.teacher_lr, self.batch_size = teacher_epochs, teacher_lr, batch_size
        self.lr_img, self.r_bn = lr_img, r_bn

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
        latent = torch.randn(k * ipc, c, h, w, device=context.device)
        state = {f"teacher.{name}": t.detach().clone() for name, t in teacher.state_dict().items()}
        state.update(latent=latent, adam_m=torch.zeros_like(latent), adam_v=torch.zeros_like(latent), adam_t=0,
                     labels=class_major_labels(k, ipc, context.device))
        return state

    def _squeeze(self, teacher: nn.Module, context: DistillContext) -> None:
        images, labels = context.train.images, context.train.labels
        params = trainable_params(teacher)
        optimizer = torch.optim.SGD(params.values(), lr=self.teacher_lr, momentum=0.9, weight_decay=5e-4)
        for _ in range(self.teacher_epochs):
            order = torch.randperm(images.shape[0], device=images.device)
            for start in range(0, images.shape[0], self.batch_size):
                idx = order[start:start + self.batch_size]
                # BatchNorm statistics update in an ordinary forward; the regularizer's functional
                # passes then use those running statistics' batch as given.
                teacher.train()
                with torch.no_grad():
                    teacher(images[idx])
                for m in _batch_norms(teacher):
                    m.eval()
                grads = context.regularizer.parameter_gradient(make_loss_fn(teacher),
                                                                {n: p.detach() for n, p in params.items()},
                                                                images[idx], labels[idx])
                for name, p in params.items():
                    p.grad = grads[name]
                optimizer.step()

    def step(self, state: dict, context: DistillContext) -> dict[str, float]:
        teacher = self._teacher(state, context)
        for p in teacher.parameters():
            p.requires_grad_(False)
        stats = []
        hooks = [m.register_forward_hook(lambda mod, inp, out: stats.append((mod, inp[0])))
                 for m in _batch_norms(teacher)]
        mean, std = dataset_stats(context)
        latent = state["latent"].detach().requires_grad_(True)
        try:
            logits = teacher((latent * std + mean).clamp(0, 1))
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
            state["latent"] = latent.detach() - self.lr_img * m_hat / (v_hat.sqrt() + 1e-8)
        return {"recover_loss": loss.item(), "ce": ce.item()}

    def result(self, state: dict, context: DistillContext):
        mean, std = dataset_stats(context)
        images = (state["latent"] * std + mean).clamp(0, 1).contiguous()
        with torch.no_grad():
            soft = self._teacher(state, context)(images)
        return images, state["labels"].clone(), soft
