"""What a set format's reader gives the importer: the set in pixel units, as its tool made it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class ReadSet:
    """A set read from another tool's files, before the importer checks it against the dataset.

    ``images``: (N, C, H, W) floating point in pixel units, that is with any normalization the tool
    applied undone, and not clipped: a set outside [0, 1] is returned as it is (the importer clips
    only on ``--clip``). ``labels``: (N,) class indices, any integer dtype. ``soft_labels``:
    optional (N, classes) float logits, which evaluation trains on by knowledge distillation.
    ``files``: every file the reader read, for the provenance hashes. ``converted``: what the reader
    changed, one phrase each ("un-normalized with mean [...] std [...]"). ``extra``: JSON-able facts
    worth keeping in ``meta["imported"]`` (MTT's learned lr, DC's experiment index).
    ``num_classes``: the class count the source itself declares (class folders, soft-label width),
    or ``None``; the importer compares it with the dataset's.

    The importer then requires finite values, the dataset's channels, image size and class count,
    and labels covering every class, each failure one line naming what differs.
    """

    images: torch.Tensor
    labels: torch.Tensor
    files: list[Path]
    soft_labels: torch.Tensor | None = None
    converted: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    num_classes: int | None = None
