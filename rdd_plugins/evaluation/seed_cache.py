"""Finished evaluation seeds kept on disk, so an interrupted evaluation loses at most one model.

Every (backbone, seed) result is written as JSON as soon as it is done, under a key that covers
everything its numbers depend on: the resolved config, the device it ran on ("auto" resolved),
the set's tensors, the test split, the backbone, the seed, and the versions of the packages that
compute them (an upgraded torch or torchattacks computes afresh; a change to this repository's
code under the same version number does not: start a fresh folder after one). Rerunning the same
evaluation into the same folder reuses the results whose key matches; since each model is seeded,
the finished report is the one an uninterrupted run writes. A file with another key, or
unreadable, is simply computed again.

On several ranks (torchrun) rank 0 alone reads and writes the folder (pipeline.evaluate_set). The
key holds nothing about the ranks, not even their number: the results do not depend on it, so a
rerun on another number of processes reuses them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..storage import DistilledSet, write_json
from ..versions import package_versions


def set_digest(distilled: DistilledSet) -> str:
    """SHA-256 of the set's tensors (images, labels, soft labels, crop views)."""
    digest = hashlib.sha256()
    for tensor in (distilled.images, distilled.labels, distilled.soft_labels, distilled.crop_boxes):
        if tensor is not None:
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class SeedCache:
    """``get(backbone, seed)`` -> the stored per-seed result or None; ``put`` writes one atomically."""

    def __init__(self, folder: str | Path, config: dict, set_sha: str, test: tuple) -> None:
        self.folder = Path(folder)
        self.base = {"config": config, "set": set_sha, "test": list(test), "versions": package_versions()}

    def _key(self, backbone: str, backbone_params: dict, seed: int) -> str:
        doc = {**self.base, "backbone": backbone, "backbone_params": backbone_params, "seed": seed}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()

    def _path(self, backbone: str, seed: int) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in backbone)
        return self.folder / f"{safe}-seed{seed}.json"

    def get(self, backbone: str, backbone_params: dict, seed: int) -> dict | None:
        path = self._path(backbone, seed)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("key") != self._key(backbone, backbone_params, seed):
            return None
        return doc.get("result")

    def put(self, backbone: str, backbone_params: dict, seed: int, result: dict) -> None:
        write_json(self._path(backbone, seed), {"key": self._key(backbone, backbone_params, seed), "result": result})
