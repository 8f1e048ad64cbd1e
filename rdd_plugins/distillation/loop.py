"""THE distillation loop. It names no concrete component: every part comes from the registry.

The loop owns iterations, progress, the NaN guard, checkpoints and storage; the distiller owns its
state. With a run folder, a checkpoint is written every ``distill.checkpoint_every`` iterations and
``resume=True`` continues from the last one, bit-identically on CPU.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..checkpoint import CHECKPOINT_FILE, load_checkpoint, restore_rng, run_fingerprint, save_checkpoint
from ..config import RunConfig, to_toml
from ..errors import RddError
from ..lifecycle import DistillStep, notify
from ..progress import bar
from ..registry import Registry
from ..runtime import prepare_device
from ..storage import IMAGES_FILE, META_FILE, DistilledSet, atomic_write_text, save_distilled, write_json
from ..versions import package_versions
from .contract import DistillContext

HISTORY_FILE = "history.json"
RUN_FILES = (CHECKPOINT_FILE, IMAGES_FILE, META_FILE, HISTORY_FILE)


def load_split(registry: Registry, config: RunConfig, split: str):
    data = config.data
    return registry.create("datasets", data.dataset, data.root or None, split, **data.params)


def model_factory(registry: Registry, name: str, params: dict, dataset, device: torch.device):
    """A zero-argument callable giving a fresh backbone for ``dataset`` on ``device``."""
    registry.get("backbones", name)  # fail on an unknown name before any work starts

    def make_model():
        model = registry.create("backbones", name, dataset.channels, dataset.num_classes,
                                dataset.image_size, dataset.mean, dataset.std, **params)
        return model.to(device)

    return make_model


def _non_finite(losses: dict[str, float], state: dict) -> str:
    bad = [f"{k}={v}" for k, v in losses.items() if not math.isfinite(v)]
    bad += [f"state {k}" for k, v in state.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    return ", ".join(bad)


def _forked_rng(device: torch.device):
    """Plugins run under this: whatever they draw from torch's generators, the run's stream and
    therefore resume (whose checkpoint holds the stream as it was before them) stay exact."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda)


def current_images(distiller, state: dict, context: DistillContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh copies of the images and labels so far, for a plugin watching the run.

    ``distiller.preview(state, context)`` where it has one (no relabelling: sre2l's result() runs its
    teacher on every crop view), else the first two tensors of ``result``. Under a forked RNG, so a
    plugin that looks (or not) never changes the run's random stream, and resume stays exact.
    """
    with _forked_rng(context.device):
        show = getattr(distiller, "preview", None)
        tensors = show(state, context) if show is not None else distiller.result(state, context)[:2]
        return tuple(t.detach().clone() for t in tensors)


def run_distillation(config: RunConfig, registry: Registry, out: str | Path | None = None,
                     progress: bool = True, resume: bool = False) -> DistilledSet:
    """Distil ``config``'s dataset; write the set, its meta and the resolved config to ``out``."""
    dcfg = config.distill
    for kind, name in (("distillers", dcfg.distiller), ("regularizers", dcfg.regularizer),
                       ("datasets", config.data.dataset), ("backbones", config.backbone.name)):
        registry.get(kind, name)
    if resume and not out:
        raise RddError("resume needs the run folder")
    device = prepare_device(config.device)
    torch.manual_seed(config.seed)
    train = load_split(registry, config, "train")
    train.images, train.labels = train.images.to(device), train.labels.to(device)
    distiller = registry.create("distillers", dcfg.distiller, **dcfg.params)
    context = DistillContext(
        train=train,
        ipc=dcfg.ipc,
        iterations=dcfg.iterations,
        make_model=model_factory(registry, config.backbone.name, config.backbone.params, train, device),
        regularizer=registry.create("regularizers", dcfg.regularizer, **dcfg.regularizer_params),
        device=device,
    )
    out_dir = Path(out) if out else None
    resolved = config.to_dict()
    fingerprint = run_fingerprint(resolved)
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:  # a fresh run replaces the folder's previous run, checkpoint included
            for name in RUN_FILES:
                (out_dir / name).unlink(missing_ok=True)
        atomic_write_text(out_dir / "config.toml", to_toml(resolved))

    started = time.perf_counter()
    iterations = dcfg.iterations if getattr(distiller, "iterations_needed", True) else 0
    if resume:
        completed, state, history, rng = load_checkpoint(out_dir, device, fingerprint)
        restore_rng(rng)
    else:
        state = distiller.init(context)
        completed, history = 0, []
    saved = completed if resume else None  # the iteration the checkpoint on disk holds
    checkpointing = bool(out_dir and dcfg.checkpoint_every and iterations)
    interrupted = stopped_early = False
    try:
        with bar(total=iterations, initial=completed, desc=f"distill {dcfg.distiller}+{dcfg.regularizer}",
                 enabled=progress) as pbar:
            for it in range(completed, iterations):
                t0 = time.perf_counter()
                losses = distiller.step(state, context)
                bad = _non_finite(losses, state)
                if bad:
                    kept = f"; the last good checkpoint (iteration {saved}) is kept" if saved is not None else ""
                    raise RddError(f"iteration {it}: non-finite {bad}{kept}; lower the learning rates")
                history.append({"iteration": it, "seconds": round(time.perf_counter() - t0, 4), **losses})
                completed = it + 1
                if checkpointing and (completed % dcfg.checkpoint_every == 0 or completed == iterations):
                    save_checkpoint(out_dir, iteration=completed, state=state, history=history,
                                    fingerprint=fingerprint)
                    saved = completed
                pbar.update(1)
                pbar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()})
                view = DistillStep(iteration=completed, iterations=iterations, losses=dict(losses),
                                   # a fresh copy per call: a plugin that mutates it cannot touch the run
                                   seconds=history[-1]["seconds"], config=config.to_dict(),
                                   images=lambda: current_images(distiller, state, context))
                with _forked_rng(device):
                    answers = notify("rdd_distill_step", step=view)
                if any(r is True for r in answers):
                    stopped_early = True
                    break
    except KeyboardInterrupt:
        # Keep what was distilled so far (the meta says how far it got, and that the images may
        # include part of the next iteration); --resume continues from the last checkpoint.
        interrupted = True
    # a relabelling distiller adds soft labels, and with per-crop relabelling the crop boxes
    images, labels, *relabel = distiller.result(state, context)
    if len(relabel) > 2:
        raise RddError(f"{dcfg.distiller}: result() gave {len(relabel) + 2} tensors; expected images, labels"
                       f"[, soft_labels[, crop_boxes]]")
    soft_labels, crop_boxes = ([t.detach().cpu() for t in relabel] + [None, None])[:2]
    meta = {
        "dataset": train.meta(),
        "ipc": dcfg.ipc,
        "distiller": dcfg.distiller,
        "regularizer": dcfg.regularizer,
        "backbone": config.backbone.name,
        "seed": config.seed,
        "iterations": iterations,
        "completed_iterations": completed,
        "interrupted": interrupted,
        "stopped_early": stopped_early,
        "seconds": round(time.perf_counter() - started, 3),
        "device": str(device),
        "config": resolved,
        "versions": package_versions(),
    }
    result = DistilledSet(images.detach().cpu(), labels.detach().cpu(), meta, soft_labels, crop_boxes)
    if out_dir:
        save_distilled(out_dir, result.images, result.labels, meta, soft_labels, crop_boxes)
        write_json(out_dir / HISTORY_FILE, {"history": history})
    if interrupted:
        raise KeyboardInterrupt
    notify("rdd_distill_finished", result=result)
    return result
