"""Train a fresh model on a (small) labelled set with DC's evaluation protocol."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..crops import apply_crop_boxes
from ..errors import RddError
from ..progress import bar


def train_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int,
                lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                batch_size: int = 256, progress: bool = True, desc: str = "train",
                soft_labels: torch.Tensor | None = None, temperature: float = 4.0,
                crop_boxes: torch.Tensor | None = None,
                augment: Callable[[torch.Tensor], torch.Tensor] | None = None) -> nn.Module:
    """SGD with momentum and weight decay; lr x0.1 at half of the epochs (DC's ``evaluate_synset``).

    With ``soft_labels`` (teacher logits, SRe2L's relabel) the loss is knowledge distillation:
    T² · KL(softmax(teacher / T) ‖ softmax(student / T)). With ``crop_boxes`` (N, views, 5) and
    soft labels (N, views, classes), epoch e trains on view e mod views of every image, cropped as
    the teacher saw it, against that view's soft label (SRe2L/FKD's per-crop relabelling).
    ``augment`` maps each minibatch to an augmented one (after any crop), drawing from torch's
    global generator as the shuffle does.
    """
    if crop_boxes is not None and (soft_labels is None or soft_labels.dim() != 3 or crop_boxes.dim() != 3
                                   or soft_labels.shape[:2] != crop_boxes.shape[:2] or crop_boxes.shape[1] < 1):
        raise RddError("crop_boxes (N, views, 5) need soft_labels (N, views, classes) with the same N and views")
    if crop_boxes is None and soft_labels is not None and soft_labels.dim() != 2:
        raise RddError("soft_labels with a views axis (N, views, classes) need their crop_boxes")
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = images.shape[0]
    model.train()
    for epoch in bar(range(epochs), desc=desc, enabled=progress):
        if epochs > 1 and epoch == epochs // 2:
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.1
        order = torch.randperm(n, device=images.device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            batch, teacher = images[idx], soft_labels[idx] if soft_labels is not None else None
            if crop_boxes is not None:
                view = epoch % crop_boxes.shape[1]
                batch, teacher = apply_crop_boxes(batch, crop_boxes[idx, view]), teacher[:, view]
            if augment is not None:
                batch = augment(batch)
            logits = model(batch)
            if teacher is None:
                loss = F.cross_entropy(logits, labels[idx])
            else:
                target = F.softmax(teacher / temperature, dim=1)
                loss = F.kl_div(F.log_softmax(logits / temperature, dim=1), target,
                                reduction="batchmean") * temperature ** 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    return model
