"""Versions recorded with every result, so a number can be traced to the code that made it."""

from __future__ import annotations

import platform
from importlib import metadata


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("rdd-plugins", "torch", "torchvision", "numpy", "pluggy", "safetensors", "torchattacks"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
