"""Datasets through torchvision: Fashion-MNIST (IDX files first), CIFAR-10 and CIFAR-100."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from rdd_plugins.data import ImageData, read_idx, uint8_to_images
from rdd_plugins.errors import RddError
from rdd_plugins.plugins import hookimpl

# Where Debian's `dataset-fashion-mnist` package installs the IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# Statistics of the training split in [0, 1] pixels; the models normalize with them.
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def _idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    prefix = "train" if split == "train" else "t10k"
    for suffix in ("-ubyte.gz", "-ubyte"):
        images = folder / f"{prefix}-images-idx3{suffix}"
        labels = folder / f"{prefix}-labels-idx1{suffix}"
        if images.exists() and labels.exists():
            return images, labels
    return None


def _download_root(root: str | None) -> Path:
    return Path(root).expanduser() if root else Path(os.path.expanduser("~/.cache/rdd-plugins/data"))


def _fashion_folders(root: str | None) -> list[Path]:
    """A root the user names is the only place looked in: data found elsewhere would be recorded in
    the run's config as if it came from there."""
    if root:
        r = Path(root).expanduser()
        if not r.is_dir():
            what = "does not exist" if not r.exists() else "is not a folder"
            raise RddError(f"data root {root} {what} (--data-root, data.root in a config or a study's "
                           f"[base.data]; unset, the dataset's usual places are looked in)")
        return [r, r / "fashion-mnist", r / "FashionMNIST" / "raw"]  # plain, Debian-like, torchvision
    return [DEBIAN_FASHION_MNIST, _download_root(root) / "FashionMNIST" / "raw"]


def fashion_mnist(root: str | None = None, split: str = "train", *, download: bool = True) -> ImageData:
    """Fashion-MNIST from IDX files: ``root`` (plain or torchvision layout) if given, else Debian's
    package path, then the download cache.

    Only when no files are found does it ask torchvision to download (which needs a network).
    """
    if split not in ("train", "test"):
        raise RddError(f"fashion-mnist: split must be 'train' or 'test', got {split!r}")
    pair = next((p for p in map(lambda f: _idx_pair(f, split), _fashion_folders(root)) if p), None)
    if pair is None and download:
        pair = _download_fashion(root, split)
    if pair is None:
        looked = ", ".join(str(f) for f in _fashion_folders(root))
        raise RddError(
            f"fashion-mnist not found (looked in {looked}); install it with "
            f"'apt-get install dataset-fashion-mnist' or pass --data-root DIR holding the IDX files "
            f"(data.root in a config or a study's [base.data])"
        )
    images = uint8_to_images(read_idx(pair[0]))
    labels = torch.from_numpy(read_idx(pair[1]).astype(np.int64))
    return ImageData(images, labels, FASHION_CLASSES, FASHION_MEAN, FASHION_STD, name="fashion-mnist")


def _download_fashion(root: str | None, split: str) -> tuple[Path, Path] | None:
    from torchvision.datasets import FashionMNIST

    target = _download_root(root)
    try:
        FashionMNIST(str(target), train=split == "train", download=True)
    except Exception:  # offline: fall through to the how-to-get-it error
        return None
    return _idx_pair(target / "FashionMNIST" / "raw", split)


def _cifar(cls_name: str, mean, std, name: str):
    def factory(root: str | None = None, split: str = "train", *, download: bool = False) -> ImageData:
        import torchvision.datasets as tvd

        if split not in ("train", "test"):
            raise RddError(f"{name}: split must be 'train' or 'test', got {split!r}")
        folder = Path(root or "./data").expanduser()
        try:
            ds = getattr(tvd, cls_name)(str(folder), train=split == "train", download=download)
        except RuntimeError as exc:
            raise RddError(
                f"{name} not found or corrupted under {folder} ({exc}); pass --data-root DIR holding "
                f"torchvision's {name} files (data.root in a config or a study's [base.data]), or "
                f"download=true in [data.params] when online"
            ) from exc
        images = uint8_to_images(np.asarray(ds.data), channels_last=True)
        labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
        return ImageData(images, labels, list(ds.classes), mean, std, name=name)

    factory.__name__ = name.replace("-", "_")
    factory.__doc__ = f"{name} through torchvision.datasets.{cls_name} (its on-disk layout)."
    return factory


@hookimpl
def rdd_register_datasets(register):
    register("fashion-mnist", fashion_mnist,
             "Fashion-MNIST 28x28 grey: IDX files from --data-root or Debian's dataset-fashion-mnist")
    register("cifar10", _cifar("CIFAR10", CIFAR10_MEAN, CIFAR10_STD, "cifar10"), "CIFAR-10 via torchvision")
    register("cifar100", _cifar("CIFAR100", CIFAR100_MEAN, CIFAR100_STD, "cifar100"), "CIFAR-100 via torchvision")
