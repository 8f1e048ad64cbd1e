"""What the distillation loop gives a distiller, and what distillers and regularizers provide."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import nn

from ..data import ImageData
from ..distributed.world import World, current_world
from ..randomness import seeded, work_generator

LossFn = Callable[[dict, torch.Tensor, torch.Tensor], torch.Tensor]
Gradients = dict[str, torch.Tensor]


@dataclass
class DistillContext:
    """Everything a distiller may use; built by the loop, holding no concrete component's name."""

    train: ImageData  # on ``device``
    ipc: int
    iterations: int
    make_model: Callable[[], nn.Module]  # a fresh, randomly initialised backbone on ``device``
    regularizer: "Regularizer"
    device: torch.device
    progress: bool = True  # a distiller with a long phase of its own (a teacher, features) shows a bar
    seed: int = 0  # the run's: with a work key it seeds every draw (rdd_plugins/randomness.py)
    world: World = field(default_factory=current_world)  # the ranks this run is shared between
    iteration: int = 0  # the iteration the loop is stepping (0 during init)

    def __post_init__(self) -> None:
        labels = self.train.labels
        self.class_indices = [torch.nonzero(labels == c).flatten() for c in range(self.train.num_classes)]
        # the same on the CPU, where keyed batches are drawn: a batch's picks then reach the device
        # in one copy, not one per class
        self._class_indices_cpu = [ix.cpu() for ix in self.class_indices]

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    def real_batch(self, per_class: int, key: tuple | None = None,
                   classes: range | list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A random real batch shaped (classes, per_class, C, H, W) with labels (classes, per_class).

        As DC's ``get_images``: a fresh permutation of each class, first ``per_class`` taken. Classes
        smaller than ``per_class`` shrink the batch for all classes so they stack. With ``key`` class
        c's permutation is the work key's ``(*key, c)`` draw, the same whichever rank takes it and
        whatever else is drawn (the built-in distillers); without it, torch's global generator's.
        ``classes``: these classes only (default all), in that order.
        """
        n = min(per_class, min(len(ix) for ix in self.class_indices))
        classes = range(self.num_classes) if classes is None else classes
        if key is None:
            picks = torch.stack([self.class_indices[c][torch.randperm(len(self.class_indices[c]),
                                                                      device=self.class_indices[c].device)[:n]]
                                 for c in classes])
        else:
            # drawn on the CPU: the same picks on every device type, no generator per GPU, no kernel
            # launch per class, and one copy of all picks to the device
            picks = torch.stack([ix[torch.randperm(len(ix), generator=work_generator(self.seed, *key, c))[:n]]
                                 for c, ix in ((c, self._class_indices_cpu[c]) for c in classes)])
            picks = picks.to(self.train.images.device)
        return self.train.images[picks], self.train.labels[picks]

    def generator(self, *key) -> torch.Generator:
        """A CPU generator for the draw ``key`` of this run (see rdd_plugins/randomness.py)."""
        return work_generator(self.seed, *key)

    def seeded(self, *key):
        """torch's global generators seeded for the draw ``key`` inside a ``with`` block, restored after:
        for code that takes no generator (model initialisation, a regularizer's random start)."""
        return seeded(self.seed, *key, device=self.device)

    def fresh_model(self, *key) -> nn.Module:
        """``make_model()`` initialised from the draw ``key``: the same network on every rank."""
        with self.seeded("model", *key):
            return self.make_model()

    def own_classes(self) -> range:
        """The classes this rank computes when a distiller shares them out (all of them on one
        process); contiguous blocks, rank 0's first (rdd_plugins/distributed/work.py)."""
        from ..distributed.work import block_of

        return block_of(self.num_classes, self.world)


class Regularizer(Protocol):
    """Turns a real batch into the parameter-gradient target of gradient matching."""

    def parameter_gradient(self, loss_fn: LossFn, params: dict, images: torch.Tensor,
                           labels: torch.Tensor) -> Gradients:
        """Gradient w.r.t. ``params`` of ``loss_fn(params, images, labels) + penalty``.

        Must be built from ``torch.func``-composable operations: ``grad`` from
        :mod:`rdd_plugins.distillation.autodiff` or ``torch.func``, no ``.backward()``, no
        ``.item()`` and no Python branching on tensor values (``if loss > 0``; use ``torch.where``,
        ``torch.sign``, ``torch.min``), no in-place updates of captured tensors. The matching step
        maps it over classes with ``torch.func.vmap`` on CUDA and loops on a CPU, where plain
        autograd would let such code pass; so ``gm`` and ``dsa`` check it under vmap on a tiny
        batch when a run starts, on every device, and stop with an error naming it.
        """


class Distiller(Protocol):
    """What ``rdd_register_distillers`` factories return: ``factory(**params) -> Distiller``, the
    ``params`` being the user's ``distill.params``.

    The distillation loop owns iterations, progress, checkpoints and storage; a distiller owns its
    state. ``state`` is a dict of tensors and plain data, so a checkpoint can capture it whole.
    """

    iterations_needed: bool
    """``False`` for a one-shot selector (a random subset, herding): it does all its work in
    :meth:`init` and the loop runs no steps. Absent means ``True``."""

    def real_images_per_class(self, ipc: int) -> int:
        """Optional: how many real training images of every class :meth:`init` draws at ``ipc``
        (a subset's ``ipc``; a real-initialised synthetic set's ``ipc``; 0 from noise). A study
        checks it against the dataset's smallest class before its first job, so that an IPC too
        large for the data fails in one line rather than after the jobs before it. Absent: not checked."""

    def init(self, context: DistillContext) -> dict:
        """The starting state, before the first step (a resumed run starts from its checkpoint)."""

    def step(self, state: dict, context: DistillContext) -> dict[str, float]:
        """One iteration: update ``state`` in place and return the losses to log, by name."""

    def result(self, state: dict, context: DistillContext) -> tuple[torch.Tensor, ...]:
        """The distilled set when the run ends, in one of three forms:

        * ``(images, labels)``;
        * ``(images, labels, soft_labels)``: teacher logits, ``(N, classes)``; evaluation then
          trains with knowledge distillation;
        * ``(images, labels, soft_labels, crop_boxes)`` for per-crop relabelling: logits
          ``(N, views, classes)`` for the crop views ``(N, views, 5)`` of :mod:`rdd_plugins.crops`;
          evaluation trains epoch ``e`` on view ``e mod views``.

        A distiller whose result() is costly (a teacher relabelling) may also define
        ``preview(state, context) -> (images, labels)``; the loop then uses it to show plugins the
        images so far."""


@dataclass(frozen=True)
class DistillStep:
    """Read-only view of one finished distillation iteration (see ``rdd_distill_step``)."""

    iteration: int
    iterations: int
    losses: dict
    seconds: float
    config: dict = field(repr=False)
    images: Callable[[], Any] = field(repr=False)
