"""A tool's files read without running their code: torch files only through ``weights_only``, and
safetensors / npz arrays with pickle off. Anything else is a one-line error saying what to do."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..errors import RddError

PICKLE_HINT = ("rdd-plugins never unpickles (a pickle can run any code); load it yourself in a session you "
               "trust, save the images and labels with safetensors (safetensors.torch.save_file({'images': ..., "
               "'labels': ...}, 'set.safetensors')), then use --format tensors")


def require_file(source: Path, what: str) -> Path:
    if not source.is_file():
        raise RddError(f"{what} reads a file; {source} is {'a folder' if source.is_dir() else 'missing'}")
    return source


def require_folder(source: Path, what: str) -> Path:
    if not source.is_dir():
        raise RddError(f"{what} reads a folder; {source} is {'a file' if source.exists() else 'missing'}")
    return source


def load_torch_file(path: Path):
    """What ``torch.save`` wrote, if it holds only tensors and plain containers and numbers."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, EOFError) as exc:
        raise RddError(f"{path}: not a readable torch file ({_one_line(exc)})") from None
    except Exception as exc:  # pickle's UnpicklingError and torch's RuntimeErrors alike
        text = str(exc)
        # weights_only refuses a class it would have to import and build: the file holds Python objects
        needed = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if needed:
            raise RddError(f"{path} needs pickle to load (it holds {needed.group(1)}, not only tensors); "
                           f"{PICKLE_HINT}") from None
        detail = re.search(r"WeightsUnpickler error:(.*?)(?:Check the documentation|$)", text, re.S)
        reason = detail.group(1) if detail else (text.strip().splitlines() or [type(exc).__name__])[0]
        raise RddError(f"{path}: not a file torch.save wrote ({_one_line(reason)})") from None


def load_arrays(path: Path) -> dict[str, torch.Tensor]:
    """The named tensors of a ``.safetensors`` or ``.npz`` file (npz without pickle)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                return {name: torch.from_numpy(np.array(arrays[name])) for name in arrays.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():  # an object array: numpy refuses it with allow_pickle=False
            raise RddError(f"{path} needs pickle to load (it holds object arrays); {PICKLE_HINT}") from None
        raise RddError(f"{path}: not a readable {suffix} file ({_one_line(exc)})") from None
    except Exception as exc:  # safetensors' and zipfile's own errors: still one line
        raise RddError(f"{path}: not a readable {suffix} file ({type(exc).__name__}: {_one_line(exc)})") from None
    raise RddError(f"{path}: expected a .safetensors or .npz file")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
