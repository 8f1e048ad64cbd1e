"""``rdd import``: a format plugin reads another tool's set; this checks it against the dataset,
clips it only when asked, and writes it as one of our set folders, staged and swapped in whole."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import RddError
from ..registry import Registry
from ..run.folder import StagedRun, check_writable, holds_run, recover_interrupted_swap
from ..storage import DistilledSet, save_distilled
from ..versions import package_versions
from .contract import ReadSet
from .conversions import class_indices, float_images
from .provenance import source_digests


# Unclipped sets legitimately leave [0, 1] (DC's Fashion-MNIST sets span about -0.85..2.25); a value
# beyond this is a set stored on the 0-255 scale, which would be evaluated as garbage without a word.
PIXEL_SCALE_LIMIT = 4.0


def import_set(registry: Registry, src: str | Path, *, format: str, dataset: str, out: str | Path,
               dataset_params: dict | None = None, data_root: str | None = None, clip: bool = False,
               overwrite: bool = False, **options) -> DistilledSet:
    """Read ``src`` with the set format ``format``, check it against ``dataset``'s test split
    (its classes, channels, image size), and write the set to ``out``.

    Every input is checked before the dataset or the set is read: the format and its options, the
    dataset's parameters, and ``out`` (a folder holding a set is replaced only with ``overwrite``).
    """
    source = Path(src).expanduser()
    if not source.exists():
        raise RddError(f"{src} does not exist")
    if dataset_params is not None and not isinstance(dataset_params, dict):
        raise RddError(f"dataset parameters must be a table (data.params), got {dataset_params!r}")
    params = dict(dataset_params or {})
    root = data_root or None
    registry.check("set_formats", format, source, {}, **options)
    registry.check("datasets", dataset, root, "test", **params)
    staged = _staged_output(out, source, overwrite)

    test = registry.create("datasets", dataset, root, "test", **params)
    read = registry.create("set_formats", format, source, test.meta(), **options)
    if not isinstance(read, ReadSet):
        raise RddError(f"set format {format!r} returned {type(read).__name__}, not a "
                       f"rdd_plugins.importing.contract.ReadSet")
    what = f"{src} (--format {format})"
    images, labels, soft_labels, notes = _fitted(read, test.meta(), what)
    low, high = float(images.min()), float(images.max())
    if clip:
        images = images.clamp(0.0, 1.0)
        notes.append("clipped to [0, 1]")
    imported = {**_json_safe(read.extra),
                "format": format, "plugin": registry.get("set_formats", format).plugin,
                "source": str(source.resolve()), "options": _json_safe(options),
                **source_digests(source, read.files),
                "converted": [*read.converted, *notes], "pixel_range": [low, high], "clipped": bool(clip)}
    counts = torch.bincount(labels, minlength=test.num_classes)
    meta = {
        "dataset": test.meta(),
        **({"ipc": int(counts[0])} if bool((counts == counts[0]).all()) else {}),
        "distiller": format,  # the row label: "dc+imported"
        "regularizer": "imported",
        # what evaluation needs to load the same test split again (a set made elsewhere has no run config)
        "config": {"data": {"dataset": dataset, "root": str(data_root or ""), "params": _json_safe(params)}},
        "imported": imported,
        "versions": package_versions(),
    }
    result = DistilledSet(images, labels, meta, soft_labels)
    folder = staged.open()
    try:
        save_distilled(folder, result.images, result.labels, result.meta, result.soft_labels)
        staged.publish()
    except BaseException:
        staged.discard()
        raise
    return result


def _staged_output(out: str | Path, source: Path, overwrite: bool) -> StagedRun:
    """The set folder, checked now: writable, not inside a folder being read, and not holding a set
    unless ``overwrite`` (then the old one and what was derived from it go once the new one is saved)."""
    target = check_writable(out, "set folder")
    if source.is_dir() and target.resolve().is_relative_to(source.resolve()):
        raise RddError(f"--out {out} is inside SRC {source}; write the set elsewhere")
    recover_interrupted_swap(target.resolve())
    if holds_run(target) and not overwrite:
        raise RddError(f"{out} already holds a distilled set; pass --overwrite to replace it "
                       f"and what was derived from it")
    return StagedRun(target, overwrite=True)


def _fitted(read: ReadSet, dataset: dict, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                            list[str]]:
    """The read set as float32 images and int64 labels, or a one-line error naming what does not
    fit the dataset."""
    images, notes = float_images(read.images, what)
    if images.dim() != 4:
        raise RddError(f"{what}: images must be 4-D (N, C, H, W), got shape {tuple(images.shape)}")
    labels, label_notes = class_indices(read.labels, what)
    notes += label_notes
    if labels.shape[0] != images.shape[0]:
        raise RddError(f"{what}: {images.shape[0]} images but {labels.shape[0]} labels")
    name, classes = dataset["name"], len(dataset["classes"])
    channels, size = dataset["channels"], tuple(dataset["image_size"])
    differences = []
    if images.shape[1] != channels:
        differences.append(f"{images.shape[1]} channels vs {channels}")
    if tuple(images.shape[2:]) != size:
        differences.append(f"image size {_size(images.shape[2:])} vs {_size(size)}")
    if read.num_classes is not None and read.num_classes != classes:
        differences.append(f"{read.num_classes} classes vs {classes}")
    soft = read.soft_labels
    if soft is not None and (soft.dim() != 2 or soft.shape[0] != images.shape[0]):
        raise RddError(f"{what}: soft labels of shape {tuple(soft.shape)}; expected ({images.shape[0]}, classes)")
    if soft is not None and soft.shape[1] != classes and read.num_classes is None:
        differences.append(f"soft labels for {soft.shape[1]} classes vs {classes}")
    if differences:
        raise RddError(f"{what} does not fit dataset {name!r}: {'; '.join(differences)}")
    if labels.numel() == 0:
        raise RddError(f"{what}: the set holds no images")
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise RddError(f"{what}: labels run from {int(labels.min())} to {int(labels.max())} but dataset "
                       f"{name!r} has {classes} classes (0..{classes - 1})")
    covered = int(labels.unique().numel())
    if covered != classes:
        raise RddError(f"{what}: the set has images of {covered} of the {classes} classes of dataset {name!r}; "
                       f"is --dataset right?")
    if not torch.isfinite(images).all():
        raise RddError(f"{what}: images contain NaN or inf")
    if float(images.abs().max()) > PIXEL_SCALE_LIMIT:
        raise RddError(f"{what}: pixel values reach {float(images.abs().max()):.4g}, which looks like a 0-255 "
                       f"scale; float images must be in pixel units of [0, 1] (divide by 255, or save uint8)")
    return images.contiguous(), labels, None if soft is None else soft.float().contiguous(), notes


def _size(hw) -> str:
    return "x".join(str(int(v)) for v in hw)


def _json_safe(options: dict) -> dict:
    return json.loads(json.dumps(options, default=str))
