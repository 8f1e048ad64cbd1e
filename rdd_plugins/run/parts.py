"""The parts every command builds from a config: dataset splits, a model factory, a model trained on
a distilled set, and what a set says about itself (its label, whether it is finished)."""

from __future__ import annotations

import torch

from ..config import RunConfig
from ..data import ImageData
from ..errors import RddError
from ..registry import Registry
from ..storage import DistilledSet


def load_split(registry: Registry, config: RunConfig, split: str) -> ImageData:
    data = config.data
    return registry.create("datasets", data.dataset, data.root or None, split, **data.params)


def load_test_split(registry: Registry, config: RunConfig) -> ImageData:
    """The test split, cut to its first ``evaluate.n_test`` points in order (as RobustBench takes
    them: the same points for every method)."""
    test = load_split(registry, config, "test")
    n = config.evaluate.n_test
    if n:
        test = ImageData(test.images[:n], test.labels[:n], test.classes, test.mean, test.std, test.name)
    return test


def check_backbone(registry: Registry, name: str, params: dict, shape) -> None:
    """An unknown backbone, a parameter it does not take or one of the wrong type fails here, in one
    line, before any data is loaded or anything is written."""
    registry.check("backbones", name, shape.channels, shape.num_classes, shape.image_size,
                   shape.mean, shape.std, **params)


def model_factory(registry: Registry, name: str, params: dict, shape, device: torch.device):
    """A zero-argument callable giving a fresh backbone for ``shape`` (a dataset, or a set's
    :class:`DatasetShape`) on ``device``."""
    check_backbone(registry, name, params, shape)

    def make_model():
        model = registry.create("backbones", name, shape.channels, shape.num_classes, shape.image_size,
                                shape.mean, shape.std, **params)
        return model.to(device)

    return make_model


class DatasetShape:
    """What a model factory needs of a dataset, read from a set's metadata (for when the dataset
    itself is not loaded: robustbench loads CIFAR's test split on its own)."""

    def __init__(self, distilled: DistilledSet) -> None:
        meta = distilled.dataset
        self.channels = int(distilled.images.shape[1])
        self.image_size = tuple(int(v) for v in distilled.images.shape[2:])
        self.num_classes = len(meta["classes"])
        if "mean" not in meta or "std" not in meta:
            raise RddError("the set's meta.json has no dataset mean/std; the model cannot normalize its inputs")
        self.mean, self.std = tuple(meta["mean"]), tuple(meta["std"])


def set_label(distilled: DistilledSet) -> str:
    return f"{distilled.meta.get('distiller', '?')}+{distilled.meta.get('regularizer', '?')}"


def unfinished(distilled: DistilledSet | dict) -> str:
    """"interrupted at 4/30" (or "stopped early at ...") for a set its run did not finish; "" else."""
    meta = distilled.meta if isinstance(distilled, DistilledSet) else distilled
    done, budget = meta.get("completed_iterations"), meta.get("iterations")
    if meta.get("interrupted"):
        return f"interrupted at {done}/{budget}"
    if meta.get("stopped_early"):
        return f"stopped early by a plugin at {done}/{budget}"
    return ""


def train_on_set(make_model, distilled: DistilledSet, config: RunConfig, device: torch.device, *,
                 progress: bool, desc: str):
    """A fresh model trained on the set with the evaluate section's protocol (DC's), with knowledge
    distillation from the set's soft labels where it has them; returned in eval mode."""
    from ..evaluation.train import train_model

    ecfg = config.evaluate
    optional = {k: None if t is None else t.to(device)
                for k, t in (("soft_labels", distilled.soft_labels), ("crop_boxes", distilled.crop_boxes))}
    model = train_model(make_model(), distilled.images.to(device), distilled.labels.to(device),
                        epochs=ecfg.epochs, lr=ecfg.lr, momentum=ecfg.momentum, weight_decay=ecfg.weight_decay,
                        batch_size=ecfg.batch_size, progress=progress, desc=desc,
                        temperature=ecfg.kd_temperature, augment=training_augment(ecfg.augment, distilled, device),
                        **optional)
    return model.eval()


def training_augment(name: str, distilled: DistilledSet, device: torch.device):
    """The minibatch augmentation ``evaluate.augment`` names, or None. "dsa": DSA's evaluation
    training, one transform drawn per minibatch with its parameters drawn per image (DSA's
    unseeded ``DiffAugment``), in the units of the set's dataset statistics."""
    if name == "none":
        return None
    if name != "dsa":
        raise RddError(f"evaluate.augment must be none or dsa, got {name!r}")
    from ..augmentation import SiameseAugment

    shape = DatasetShape(distilled)
    mean = torch.tensor(shape.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(shape.std, device=device).view(1, -1, 1, 1)
    augmenter = SiameseAugment(who="evaluate.augment")
    return lambda batch: augmenter.apply([batch], mean, std, siamese=False)[0]
