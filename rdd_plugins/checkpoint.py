"""Checkpoints of a distillation run: one safetensors file, written atomically (write, then rename).

It holds the distiller's state (tensors, plus plain JSON data in the file's metadata), the RNG
states, the iteration, the loss history and the device type it was written on, so a resumed run
continues bit-identically on CPU. A checkpoint resumes on another machine too: the CUDA generators
that machine has are restored by index, and a change of device type is named on stderr, since the
random streams, and so the rest of the run, then differ from the run's own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config.schema import RUNTIME_KEYS, without_keys_added_later
from .errors import RddError
from .storage import atomic_write

CHECKPOINT_FILE = "checkpoint.safetensors"
# How a run's random draws are made. 2: keyed by work (rdd_plugins/randomness.py). A checkpoint of
# another scheme began with draws its resume would not continue.
DRAWS = 2


def capture_rng() -> dict[str, torch.Tensor]:
    rng = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"rng.cuda.{i}"] = s
    return rng


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    """Restore the generators this machine has: the CPU's, and the CUDA ones by index (a checkpoint
    from a machine with more GPUs, or from a GPU onto a CPU, restores what exists here)."""
    torch.set_rng_state(tensors["rng.cpu"])
    if not torch.cuda.is_available():
        return
    for index, state in cuda_rng_states(tensors).items():
        if index < torch.cuda.device_count():
            torch.cuda.set_rng_state(state, index)


def cuda_rng_states(tensors: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """GPU index -> generator state, from the "rng.cuda.N" tensors."""
    prefix = "rng.cuda."
    return {int(k[len(prefix):]): v for k, v in tensors.items() if k.startswith(prefix)}


def run_fingerprint(config: dict) -> str:
    """What must not change between a checkpoint and its resume: the config less the runtime keys
    (device, deterministic, tf32: how a machine computes) and the iteration budget (a run may be
    extended). Keys added later at their old value do not count (schema.KEYS_ADDED_LATER), so a
    checkpoint written with or without them resumes."""
    kept = {k: v for k, v in without_keys_added_later(config).items() if k not in RUNTIME_KEYS}
    if isinstance(kept.get("distill"), dict):
        kept["distill"] = {k: v for k, v in kept["distill"].items() if k != "iterations"}
    return json.dumps(kept, sort_keys=True)


def _legacy_fingerprint(config: dict) -> str:
    """The fingerprint of checkpoints written before runs could be extended (budget included)."""
    return json.dumps({k: v for k, v in config.items() if k not in RUNTIME_KEYS}, sort_keys=True)


def save_checkpoint(folder: str | Path, *, iteration: int, state: dict, history: list[dict],
                    fingerprint: str, device: torch.device | str | None = None, seconds: float | None = None,
                    cpu_threads: list[int] | None = None) -> Path:
    """Save after ``iteration`` finished iterations; ``state`` is tensors and JSON-able values;
    ``device``, the run's, lets a resume elsewhere say that it is not exact; ``seconds``, what the
    run has spent so far, lets a resumed run report what all its legs took; ``cpu_threads``, the
    thread counts they ran with, whether those seconds compare."""
    folder = Path(folder)
    tensors = capture_rng()
    plain = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[f"state.{key}"] = value.detach().cpu().contiguous().clone()
        else:
            try:
                json.dumps(value)
            except TypeError:
                raise RddError(f"distiller state {key!r} is neither a tensor nor JSON data; "
                               f"a checkpoint cannot hold it") from None
            plain[key] = value
    record = {"iteration": iteration, "state": plain, "history": history, "fingerprint": fingerprint,
              "draws": DRAWS}
    if device is not None:
        record["device"] = torch.device(device).type
    if seconds is not None:
        record["seconds"] = round(float(seconds), 3)
    if cpu_threads is not None:
        record["cpu_threads"] = [int(t) for t in cpu_threads]
    doc = json.dumps(record)
    atomic_write(folder / CHECKPOINT_FILE,
                 lambda tmp: save_file(tensors, tmp, metadata={"format": "rdd-checkpoint", "json": doc}))
    return folder / CHECKPOINT_FILE


def load_checkpoint(folder: str | Path, device: torch.device,
                    config: dict | None = None) -> tuple[int, dict, list[dict], dict]:
    """-> (iteration, state on ``device``, history, rng tensors for :func:`restore_rng`).

    With ``config`` (the resolved run config), refuse a checkpoint that another config wrote. A
    checkpoint written on another device type resumes with a warning on stderr.
    """
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        raise RddError(f"no checkpoint in {folder} ({CHECKPOINT_FILE} is missing); nothing to resume")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        doc = json.loads(meta["json"])
        iteration, history, plain = int(doc["iteration"]), list(doc["history"]), dict(doc["state"])
        rng = {k: v for k, v in tensors.items() if k.startswith("rng.")}
        if "rng.cpu" not in rng:
            raise KeyError("rng.cpu")
        cuda_rng_states(rng)  # "rng.cuda.N" with an integer N, or no readable checkpoint
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as exc:
        raise RddError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if doc.get("draws", 1) != DRAWS:
        raise RddError(f"{path} was written by an rdd whose random draws were not keyed by work (before "
                       f"several processes were supported); it cannot continue exactly: run it again from the start")
    if config is not None and _comparable(doc.get("fingerprint")) not in (run_fingerprint(config),
                                                                          _legacy_fingerprint(config)):
        raise RddError(f"{path} was written by another config than {Path(folder) / 'config.toml'}; "
                       f"resume needs the run's own config")
    warn_if_device_type_differs(path, doc.get("device"), torch.device(device).type)
    state = plain
    for key, value in tensors.items():
        if key.startswith("state."):
            state[key[len("state."):]] = value.to(device)
    return iteration, state, history, rng


def checkpoint_record(folder: str | Path) -> dict | None:
    """The JSON part of the checkpoint in ``folder`` (iteration, fingerprint, seconds, ...), read
    without its tensors; None when it has none, or none readable."""
    try:
        with safe_open(str(Path(folder) / CHECKPOINT_FILE), framework="pt") as f:
            record = json.loads((f.metadata() or {})["json"])
    except (SafetensorError, OSError, KeyError, TypeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def checkpoint_fingerprint(folder: str | Path) -> str | None:
    """The fingerprint of the checkpoint in ``folder``; None when it has none, or none readable."""
    record = checkpoint_record(folder)
    return None if record is None else _comparable(record.get("fingerprint"))


def checkpoint_threads(folder: str | Path) -> list[int] | None:
    """The intra-op thread counts the run's legs had run with when the checkpoint in ``folder`` was
    written; None when it does not say (written before checkpoints recorded them) or cannot be read."""
    threads = (checkpoint_record(folder) or {}).get("cpu_threads")
    if not isinstance(threads, list) or not all(isinstance(t, int) for t in threads):
        return None
    return threads


def checkpoint_seconds(folder: str | Path) -> float:
    """The seconds the run had spent when the checkpoint in ``folder`` was written; 0 when it does
    not say (written before checkpoints recorded them) or cannot be read."""
    try:
        return float((checkpoint_record(folder) or {}).get("seconds", 0.0))
    except (TypeError, ValueError):
        return 0.0


def _comparable(fingerprint: str | None) -> str | None:
    """A stored fingerprint as run_fingerprint would write it today (keys added later at their old
    value dropped): one written before such a key existed, and one written with it, both match."""
    try:
        return json.dumps(without_keys_added_later(json.loads(fingerprint)), sort_keys=True)
    except (TypeError, ValueError, AttributeError):
        return fingerprint


def warn_if_device_type_differs(path: Path, written_on: str | None, resumed_on: str) -> None:
    """Each device type has its own generators and kernels: the run goes on, but not as it would have."""
    if written_on is not None and written_on != resumed_on:
        print(f"rdd: warning: {path} was written on {written_on} and resumes on {resumed_on}: the run "
              f"continues, but not bit-identically to one that stayed on {written_on}", file=sys.stderr)
