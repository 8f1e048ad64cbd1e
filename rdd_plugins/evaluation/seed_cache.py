"""Finished evaluation seeds kept on disk, so an interrupted evaluation loses at most one model.

Every (backbone, seed) result is written as JSON as soon as it is done, under a key that covers
everything its numbers depend on: the resolved config, the device it ran on ("auto" resolved;
on a CPU, the intra-op thread count, since reductions split across threads round differently),
the set's tensors, the test split, the backbone, the seed, and the versions of the packages that
compute them (an upgraded torch or torchattacks computes afresh; a change to this repository's
code under the same version number does not: start a fresh folder after one). Rerunning the same
evaluation into the same folder reuses the results whose key matches; since each model is seeded,
the finished report is the one an uninterrupted run writes. A file with another key, or
unreadable, is simply computed again.

On several ranks (torchrun) rank 0 alone reads and writes the folder (pipeline.evaluate_set). The
key holds nothing about the ranks, not even their number: the results do not depend on it, so a
rerun on another number of processes (with as many threads each) reuses them.

``ModelCache`` keeps the trained evaluation models themselves (safetensors), keyed by what their
training depends on (on a CPU, the thread count too) and nothing about the attacks: an evaluation
of the same set under other attacks, radii or test points (a study's changed ``eps``, its
AutoAttack pass) attacks the models it finds instead of training them again. Their weights are the trained ones bit for bit, and every
attack draws under its own work key, so the numbers are those of a run that trained them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from torch import nn

from ..config import ATTACK_PLAN_KEYS
from ..storage import DistilledSet, atomic_write, write_json
from ..versions import package_versions

# evaluate keys no model's training reads: the attacks, the test points, the attack batches, and
# how many seeds and which backbones (each model is keyed by its own backbone and seed)
NOT_TRAINING = (*ATTACK_PLAN_KEYS, "n_test", "eval_batch_size", "seeds", "backbone", "backbone_params")


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
        self.base = {"config": config, "set": set_sha, "test": list(test), "versions": package_versions(),
                     "cpu_threads": cpu_thread_count(str(test[-1]))}

    def _key(self, backbone: str, backbone_params: dict, seed: int) -> str:
        return _digest({**self.base, "backbone": backbone, "backbone_params": backbone_params, "seed": seed})

    def _path(self, backbone: str, seed: int) -> Path:
        return self.folder / f"{_safe(backbone)}-seed{seed}.json"

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


def cpu_thread_count(device: str) -> int | None:
    """On a CPU, the intra-op thread count (float reductions split across threads round
    differently, so a model trained with another count is another model); None elsewhere."""
    import torch

    return torch.get_num_threads() if device == "cpu" else None


def _digest(doc: dict) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _safe(backbone: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in backbone)


class ModelCache:
    """``get(backbone, params, seed, make_model)`` -> (the stored trained model in eval mode, its
    training seconds) or None; ``put`` stores one atomically. Files are named by their key, so the
    models of other training settings sit beside each other."""

    def __init__(self, folder: str | Path, config: dict, set_sha: str, device: str) -> None:
        self.folder = Path(folder)
        # what training reads: the set, the training keys of evaluate, the dataset (its shape and
        # statistics build the model), the numerics, where and with which torch it ran
        training = {k: v for k, v in config.get("evaluate", {}).items() if k not in NOT_TRAINING}
        data = config.get("data", {})
        versions = package_versions()
        self.base = {"set": set_sha, "evaluate": training,
                     "data": {"dataset": data.get("dataset"), "params": data.get("params")},
                     "numerics": {k: config.get(k) for k in ("deterministic", "tf32")},
                     "device": device, "cpu_threads": cpu_thread_count(device),
                     "versions": {k: versions.get(k) for k in ("rdd-plugins", "torch", "torchvision")}}

    def _path(self, backbone: str, backbone_params: dict, seed: int) -> Path:
        key = _digest({**self.base, "backbone": backbone, "backbone_params": backbone_params, "seed": seed})
        return self.folder / f"{_safe(backbone)}-seed{seed}-{key[:16]}.safetensors"

    def get(self, backbone: str, backbone_params: dict, seed: int, make_model) -> tuple[nn.Module, float] | None:
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        path = self._path(backbone, backbone_params, seed)
        try:
            with safe_open(str(path), framework="pt") as f:
                seconds = float((f.metadata() or {})["train_seconds"])
            weights = load_file(str(path))
            model = make_model()
            device = next(iter(model.state_dict().values())).device
            model.load_state_dict({k: v.to(device) for k, v in weights.items()}, strict=True)
        except (SafetensorError, OSError, ValueError, KeyError, RuntimeError, StopIteration):
            return None  # absent, or damaged: trained again
        return model.eval(), seconds

    def put(self, backbone: str, backbone_params: dict, seed: int, model: nn.Module, train_seconds: float) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path(backbone, backbone_params, seed),
                     lambda tmp: save_file(tensors, tmp, metadata={"train_seconds": str(train_seconds)}))
