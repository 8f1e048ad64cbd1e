"""A distilled set on disk: ``images.safetensors`` (images, labels) + ``meta.json``. No pickle."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .crops import check_crop_boxes
from .data import check_image_batch
from .errors import RddError

IMAGES_FILE = "images.safetensors"
META_FILE = "meta.json"
FORMAT_VERSION = 1


@dataclass
class DistilledSet:
    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1] (an unclipped imported set: any finite value)
    labels: torch.Tensor  # (N,) int64
    meta: dict  # dataset metadata, ipc, distiller, regularizer, backbone, config, seed, versions
    # Teacher logits (SRe2L's relabel): (N, classes), one per image, or (N, views, classes), one per
    # crop view in crop_boxes (N, views, 5) (SRe2L/FKD's per-crop relabelling; rdd_plugins.crops).
    soft_labels: torch.Tensor | None = None
    crop_boxes: torch.Tensor | None = None

    @property
    def dataset(self) -> dict:
        return self.meta["dataset"]


def temporary_prefix(name: str) -> str:
    """How the temporary file of an atomic write of ``name`` begins (a kill can leave one behind)."""
    return f".{name}."


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` into a temporary file beside ``path``, then rename it over ``path``: an
    interrupted run never leaves a half-written file. The data are flushed to disk before the
    rename and the rename after it, so a power loss cannot leave an empty file where the previous
    checkpoint was (a rename can reach the disk before the data it names)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path.name))
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes 0600 (and a writer may create the file anew): colleagues should read results
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _umask() -> int:
    try:  # Linux reports it without changing it (os.umask would, briefly, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a directory
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _check_soft_labels(soft: torch.Tensor, boxes: torch.Tensor | None, n: int, num_classes: int,
                       what: str) -> None:
    if boxes is None:
        if soft.dtype != torch.float32 or tuple(soft.shape) != (n, num_classes) or not torch.isfinite(soft).all():
            raise RddError(f"{what}: soft_labels must be finite float32 of shape ({n}, {num_classes})")
        return
    problem = check_crop_boxes(boxes)
    if problem is None and (boxes.dim() != 3 or boxes.shape[0] != n or boxes.shape[1] < 1):
        problem = f"crop_boxes must have shape ({n}, views >= 1, 5)"
    if problem:
        raise RddError(f"{what}: {problem}")
    views = boxes.shape[1]
    if soft.dtype != torch.float32 or tuple(soft.shape) != (n, views, num_classes) or not torch.isfinite(soft).all():
        raise RddError(f"{what}: soft_labels must be finite float32 of shape ({n}, {views}, {num_classes}), "
                       f"one per crop view")


def kept_unclipped(meta: dict) -> bool:
    """A set that ``rdd import`` stored as its tool made it, outside [0, 1] if it was so: the one
    kind of set whose pixels the range check lets through (models normalize inside, and attacks
    touch only test images, so such a training set is legitimate)."""
    imported = meta.get("imported")
    return isinstance(imported, dict) and imported.get("clipped") is False


def save_distilled(folder: str | Path, images: torch.Tensor, labels: torch.Tensor, meta: dict,
                   soft_labels: torch.Tensor | None = None, crop_boxes: torch.Tensor | None = None) -> Path:
    folder = Path(folder)
    num_classes = len(meta["dataset"]["classes"])
    images = images.detach().float().cpu().contiguous()
    labels = labels.detach().long().cpu().contiguous()
    check_image_batch(images, labels, num_classes, what="distilled set",
                      allow_outside_unit_range=kept_unclipped(meta))
    tensors = {"images": images, "labels": labels}
    if crop_boxes is not None and soft_labels is None:
        raise RddError("distilled set: crop_boxes without soft_labels (the views' labels)")
    if soft_labels is not None:
        tensors["soft_labels"] = soft_labels.detach().float().cpu().contiguous()
        if crop_boxes is not None:
            tensors["crop_boxes"] = crop_boxes.detach().float().cpu().contiguous()
        _check_soft_labels(tensors["soft_labels"], tensors.get("crop_boxes"), images.shape[0], num_classes,
                           "distilled set")
    atomic_write(folder / IMAGES_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "rdd-distilled"}))
    write_json(folder / META_FILE, {"format_version": FORMAT_VERSION, **meta})
    return folder


def load_distilled(folder: str | Path) -> DistilledSet:
    """Load and validate a distilled-set folder; any problem is a one-line RddError."""
    folder = Path(folder)
    images_path, meta_path = folder / IMAGES_FILE, folder / META_FILE
    if folder.is_file():
        raise RddError(f"{folder} is a file, not a distilled-set folder (one holding {IMAGES_FILE} and {META_FILE})")
    if not folder.is_dir():
        raise RddError(f"{folder} is not a distilled-set folder (it does not exist)")
    for p in (images_path, meta_path):
        if not p.is_file():
            raise RddError(f"{folder} is not a distilled-set folder: {p.name} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RddError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("dataset"), dict) or \
            not isinstance(meta["dataset"].get("classes"), list):
        raise RddError(f"{meta_path}: missing the 'dataset' table with its 'classes'")
    try:
        tensors = load_file(str(images_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RddError(f"{images_path}: not a readable safetensors file ({exc})") from None
    if not {"images", "labels"} <= set(tensors) <= {"images", "labels", "soft_labels", "crop_boxes"} or \
            ("crop_boxes" in tensors and "soft_labels" not in tensors):
        raise RddError(f"{images_path}: expected tensors 'images', 'labels' (and optionally 'soft_labels', "
                       f"with it 'crop_boxes'), found {sorted(tensors)}")
    images, labels = tensors["images"], tensors["labels"]
    check_image_batch(images, labels, len(meta["dataset"]["classes"]), what=str(images_path),
                      allow_outside_unit_range=kept_unclipped(meta))
    soft, boxes = tensors.get("soft_labels"), tensors.get("crop_boxes")
    if soft is not None:
        _check_soft_labels(soft, boxes, images.shape[0], len(meta["dataset"]["classes"]), str(images_path))
    ds = meta["dataset"]
    expected = (ds.get("channels"), *ds.get("image_size", [None, None]))
    if tuple(images.shape[1:]) != tuple(expected):
        raise RddError(f"{images_path}: images of shape {tuple(images.shape[1:])} but meta.json says {expected}")
    if "ipc" in meta and images.shape[0] != meta["ipc"] * len(ds["classes"]):
        raise RddError(f"{images_path}: {images.shape[0]} images but meta.json says ipc {meta['ipc']} "
                       f"x {len(ds['classes'])} classes")
    return DistilledSet(images, labels, meta, soft, boxes)
