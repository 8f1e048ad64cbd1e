"""Built-in set formats for ``rdd import``: the files DC/DSA/DM, MTT and SRe2L write, ImageFolder
trees and plain tensor files, registered through the public hook like any plugin's."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import RddError
from ..importing.contract import ReadSet
from ..importing.conversions import float_images, hard_or_soft_labels, pixels_from_normalized
from ..importing.image_folders import class_folders, read_class_folders
from ..importing.safe_load import load_arrays, load_torch_file, require_file, require_folder
from ..plugins import hookimpl

# What DC/DSA/DM's and MTT's utils.get_dataset normalize with before distilling, by our dataset
# name. They differ from our own statistics (CIFAR-10's std above all), so undoing the tool's
# normalization with ours would shift every pixel. DC's repository once used CIFAR-10's values for
# CIFAR-100: a set from that code needs --set mean=[...] --set std=[...].
TOOL_NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2861,), (0.3530,)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tiny-imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def dc(source: Path, dataset: dict, *, index: int = 0, mean: list | None = None,
       std: list | None = None) -> ReadSet:
    """DC, DSA and DM's results file as their main.py saves it, ``{'data': [[image_syn, label_syn],
    ...], 'accs_all_exps': ...}`` (one pair per experiment; ``index`` picks one), or a bare
    ``{'image_syn', 'label_syn'}`` dict or ``[image_syn, label_syn]`` pair. Images are normalized:
    un-normalized with the tool's values for the dataset (``mean``/``std`` to give others)."""
    path = require_file(source, "--format dc")
    images, labels, extra = _dc_pair(load_torch_file(path), index, path)
    images, notes = float_images(images, str(path))
    mean, std, whose = _normalization(dataset, mean, std, tool_values=True)
    images = pixels_from_normalized(images, mean, std, str(path))
    return ReadSet(images, labels, [path], converted=[*notes, f"un-normalized with {whose}"], extra=extra)


def _dc_pair(saved, index: int, path: Path):
    if isinstance(saved, dict) and "data" in saved:
        entries = saved["data"]
        if not isinstance(entries, (list, tuple)) or not entries:
            raise RddError(f"{path}: 'data' must be a non-empty list of [image_syn, label_syn] pairs")
        if not 0 <= index < len(entries):
            raise RddError(f"{path} holds {len(entries)} experiment(s): --index must be 0..{len(entries) - 1}, "
                           f"not {index}")
        entry = entries[index]
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise RddError(f"{path}: data[{index}] must be a pair [image_syn, label_syn]")
        return entry[0], entry[1], {"experiment": index, "experiments": len(entries)}
    if index != 0:
        raise RddError(f"{path} holds one set, not a list of experiments: drop --index")
    if isinstance(saved, dict) and {"image_syn", "label_syn"} <= set(saved):
        return saved["image_syn"], saved["label_syn"], {}
    if isinstance(saved, (list, tuple)) and len(saved) == 2:
        return saved[0], saved[1], {}
    found = f"a dict with keys {sorted(map(str, saved))}" if isinstance(saved, dict) else type(saved).__name__
    raise RddError(f"{path}: expected DC's {{'data': [[image_syn, label_syn], ...]}}, a dict with image_syn "
                   f"and label_syn, or a pair [image_syn, label_syn]; found {found}")


def mtt(source: Path, dataset: dict, *, labels: str = "", zca: bool = False, mean: list | None = None,
        std: list | None = None) -> ReadSet:
    """MTT's (and its followers') ``images_best.pt`` and ``labels_best.pt`` in a folder, with
    ``lr_best.pt`` (the learned lr, kept in the meta) when present; or one ``images_X.pt`` beside
    its ``labels_X.pt``, or labels named by ``labels``. Images are normalized like DC's; 2-D float
    labels (learned soft labels) are kept as soft labels."""
    if zca:
        raise RddError("--format mtt: a ZCA-whitened set cannot be un-whitened without the ZCA matrix, which "
                       "this importer does not take; un-whiten it yourself and use --format tensors")
    images_path, labels_path, lr_path = _mtt_files(source, labels)
    images, notes = float_images(load_torch_file(images_path), str(images_path))
    mean, std, whose = _normalization(dataset, mean, std, tool_values=True)
    images = pixels_from_normalized(images, mean, std, str(images_path))
    hard, soft, label_notes = hard_or_soft_labels(load_torch_file(labels_path), str(labels_path))
    files, extra = [images_path, labels_path], {}
    if lr_path is not None:
        lr = load_torch_file(lr_path)
        try:
            extra["lr"] = float(lr)
        except (TypeError, ValueError, RuntimeError):  # a tensor of several values, or no number at all
            raise RddError(f"{lr_path}: expected one learning rate, found {type(lr).__name__} "
                           f"{tuple(getattr(lr, 'shape', ()))}") from None
        files.append(lr_path)
    return ReadSet(images, hard, files, soft_labels=soft,
                   converted=[*notes, f"un-normalized with {whose}", *label_notes], extra=extra)


def _mtt_files(source: Path, labels: str) -> tuple[Path, Path, Path | None]:
    if source.is_dir():
        images_path, stem = source / "images_best.pt", "best"
        if not images_path.is_file():
            raise RddError(f"{source} has no images_best.pt (MTT writes images_best.pt and labels_best.pt)")
    else:
        images_path = source
        match = re.fullmatch(r"images_(.+)\.pt", source.name)
        stem = match.group(1) if match else None
    if labels:
        labels_path = Path(labels).expanduser()
    elif stem is not None:
        labels_path = images_path.with_name(f"labels_{stem}.pt")
    else:
        raise RddError(f"{source}: name the labels file with --set labels=PATH (MTT's are images_X.pt / labels_X.pt)")
    if not labels_path.is_file():
        raise RddError(f"no labels file {labels_path} for {images_path}; name it with --set labels=PATH")
    lr_path = images_path.with_name(f"lr_{stem}.pt") if stem is not None else None
    return images_path, labels_path, lr_path if lr_path is not None and lr_path.is_file() else None


def sre2l(source: Path, dataset: dict) -> ReadSet:
    """SRe2L's (and GUARD's, CDA's) recovered images: one sub-folder per class, ``new000``,
    ``new001``, ...; the k-th sub-folder in numeric order is class k. PNG or JPEG, pixels / 255."""
    root = require_folder(source, "--format sre2l")
    folders = sorted(class_folders(root), key=_numeric_order)
    images, labels, files, notes = read_class_folders([(f, k) for k, f in enumerate(folders)], dataset["channels"])
    return ReadSet(images, labels, files, converted=[*notes, "k-th sub-folder as class k"], num_classes=len(folders))


def _numeric_order(folder: Path):
    # new2 before new10, where names are not zero-padded; padded names keep their plain order
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", folder.name)]


def folder(source: Path, dataset: dict, *, by: str = "auto") -> ReadSet:
    """An ImageFolder tree: one sub-folder per class, PNG or JPEG, pixels / 255. Sub-folders named
    exactly like the dataset's classes are mapped by name; others by sorted name, as torchvision's
    ImageFolder orders them (``by``: ``auto``, ``name`` or ``order``)."""
    root = require_folder(source, "--format folder")
    if by not in ("auto", "name", "order"):
        raise RddError(f"--format folder: by must be auto, name or order, got {by!r}")
    folders = sorted(class_folders(root), key=lambda f: f.name)
    classes = list(dataset["classes"])
    named = [f for f in folders if f.name in classes]
    if by == "auto" and named and len(named) < len(folders):
        others = [f.name for f in folders if f.name not in classes]
        raise RddError(f"{root}: some sub-folders are named like the classes of dataset {dataset['name']!r} and "
                       f"some not ({', '.join(others[:3])}); rename those, or pass --set by=order")
    if by == "name" and len(named) < len(folders):
        raise RddError(f"{root}: sub-folder {next(f.name for f in folders if f.name not in classes)!r} is not a "
                       f"class of dataset {dataset['name']!r}")
    by_name = by == "name" or (by == "auto" and bool(named))
    pairs = [(f, classes.index(f.name) if by_name else k) for k, f in enumerate(folders)]
    images, labels, files, notes = read_class_folders(pairs, dataset["channels"])
    mapping = "sub-folders mapped to classes by name" if by_name else "k-th sub-folder in sorted order as class k"
    return ReadSet(images, labels, files, converted=[*notes, mapping], num_classes=None if by_name else len(folders))


def tensors(source: Path, dataset: dict, *, normalized: bool = False, mean: list | None = None,
            std: list | None = None, channels_last: bool = False) -> ReadSet:
    """A ``.safetensors`` or ``.npz`` file with ``images`` (N, C, H, W) and ``labels`` (N,), and
    optionally ``soft_labels`` (N, classes): pixels (uint8 is divided by 255), or normalized
    values with ``normalized`` (un-normalized with the dataset's mean/std unless given)."""
    path = require_file(source, "--format tensors")
    arrays = load_arrays(path)
    if not {"images", "labels"} <= set(arrays):
        raise RddError(f"{path}: expected arrays 'images' and 'labels', found {sorted(arrays) or 'none'}")
    images, notes = float_images(arrays["images"], str(path))
    if images.dim() == 3:
        images, notes = images.unsqueeze(1), [*notes, "(N, H, W) images as one channel"]
    elif channels_last and images.dim() == 4:
        images, notes = images.permute(0, 3, 1, 2), [*notes, "channels-last images as (N, C, H, W)"]
    if normalized:
        if not arrays["images"].is_floating_point():
            raise RddError(f"{path}: integer images are pixels, not normalized values; drop --normalized")
        mean, std, whose = _normalization(dataset, mean, std, tool_values=False)
        images, notes = pixels_from_normalized(images, mean, std, str(path)), [*notes, f"un-normalized with {whose}"]
    elif mean is not None or std is not None:
        raise RddError("--format tensors: mean and std describe normalized images; add --normalized")
    hard, soft, label_notes = hard_or_soft_labels(arrays["labels"], str(path))
    if "soft_labels" in arrays:
        if soft is not None:
            raise RddError(f"{path}: soft labels twice (2-D 'labels' and 'soft_labels'); keep one")
        soft = arrays["soft_labels"]
        if not soft.is_floating_point():
            raise RddError(f"{path}: soft_labels must be floating point (logits), got {soft.dtype}")
        soft = soft.float()
    return ReadSet(images, hard, [path], soft_labels=soft, converted=[*notes, *label_notes])


def _normalization(dataset: dict, mean: list | None, std: list | None, *, tool_values: bool):
    """(mean, std, whose, in words): the user's, else the tool's for this dataset, else the dataset's."""
    if (mean is None) != (std is None):
        raise RddError("give both mean and std (one value per channel), or neither")
    if mean is not None:
        listed = isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple))
        if not listed or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in [*mean, *std]) \
                or any(s <= 0 for s in std):
            raise RddError(f"mean and std must be lists of numbers (std > 0), got {mean!r} and {std!r}")
        return list(mean), list(std), f"the given mean {list(mean)} and std {list(std)}"
    if tool_values and dataset["name"] in TOOL_NORMALIZATION:
        mean, std = TOOL_NORMALIZATION[dataset["name"]]
        return mean, std, f"the tool's mean {list(mean)} and std {list(std)} for {dataset['name']}"
    return dataset["mean"], dataset["std"], f"the dataset's mean {list(dataset['mean'])} and std {list(dataset['std'])}"


@hookimpl
def rdd_register_set_formats(register):
    register("dc", dc, "DC/DSA/DM results file (res_*.pt: data[index] = [image_syn, label_syn]), normalized")
    register("mtt", mtt, "MTT's images_best.pt + labels_best.pt (+ lr_best.pt), normalized; soft labels kept")
    register("sre2l", sre2l, "SRe2L/GUARD/CDA image folders new000/, new001/, ... (PNG/JPEG)")
    register("folder", folder, "ImageFolder tree: class sub-folders by class name or in sorted order (PNG/JPEG)")
    register("tensors", tensors, ".safetensors or .npz with images and labels, pixels or --normalized")
