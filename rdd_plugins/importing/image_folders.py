"""Class folders of PNG / JPEG files (ImageFolder's layout, SRe2L's output) as a labelled batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import RddError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def class_folders(root: Path) -> list[Path]:
    """The sub-folders of ``root``, hidden ones left out, in no particular order."""
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not folders:
        raise RddError(f"{root} has no class sub-folders (one folder of images per class)")
    return folders


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def read_class_folders(folders: list[tuple[Path, int]], channels: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                  list[Path], list[str]]:
    """Every image of each (folder, class) pair, in file-name order: float32 NCHW pixels / 255,
    int64 labels, the files read and what was converted."""
    arrays, labels, files, notes = [], [], [], set()
    for folder, label in folders:
        for path in image_files(folder):
            array, note = _read_image(path, channels)
            if arrays and array.shape != arrays[0].shape:
                raise RddError(f"{path} is {_hwc(array)} but {files[0]} is {_hwc(arrays[0])}; "
                               f"every image of a set has one size")
            arrays.append(array)
            labels.append(label)
            files.append(path)
            notes.update([note] if note else [])
    if not arrays:
        raise RddError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {', '.join(str(f) for f, _ in folders[:3])}")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    return images, torch.tensor(labels, dtype=torch.int64), files, ["8-bit images divided by 255", *sorted(notes)]


def _read_image(path: Path, channels: int) -> tuple[np.ndarray, str]:
    """(H, W, C) uint8. Grey images saved as RGB (torchvision's save_image triples one channel) keep
    one channel when the dataset has one; a colour image there is an error, not averaged."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode == "P":  # a palette is storage, not content
                image, mode = image.convert("RGB"), "RGB"
            if mode in ("1", "L"):
                array = np.asarray(image.convert("L"))[..., None]
            elif mode == "RGB":
                array = np.asarray(image)
            else:
                raise RddError(f"{path}: image mode {mode} is not read (8-bit grey or RGB only)")
    except (UnidentifiedImageError, OSError) as exc:
        raise RddError(f"{path}: not a readable image ({' '.join(str(exc).split())})") from None
    if channels == 1 and array.shape[2] == 3:
        if not ((array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()):
            raise RddError(f"{path} is a colour image but the dataset has 1 channel")
        return array[..., :1], "grey images stored as RGB: one channel kept"
    return array, ""


def _hwc(array: np.ndarray) -> str:
    h, w, c = array.shape
    return f"{h}x{w} with {c} channel{'s' if c > 1 else ''}"
