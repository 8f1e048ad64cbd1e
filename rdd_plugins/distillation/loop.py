"""THE distillation loop. It names no concrete component: every part comes from the registry.

The loop owns iterations, progress, the NaN guard, checkpoints and the run folder; the distiller owns
its state. With a run folder, a checkpoint is written every ``distill.checkpoint_every`` iterations
and on Ctrl-C; ``resume=True`` continues from the last one, bit-identically on CPU.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import (checkpoint_fingerprint, checkpoint_seconds, checkpoint_threads, load_checkpoint, restore_rng,
                          run_fingerprint, save_checkpoint)
from ..config import RunConfig, to_toml
from ..distributed.work import any_rank, broadcast_from, fail_together
from ..distributed.world import World, current_world, restart_count
from ..errors import RddError
from ..lifecycle import notify
from ..progress import bar
from ..randomness import forked_rng
from ..registry import Registry
from ..run.folder import CONFIG_FILE, HISTORY_FILE, StagedRun, check_no_foreign_files, check_writable, derived_folders
from ..run.interrupt import Terminated, stop_between_steps
from ..run.parts import check_backbone, load_split, model_factory
from ..runtime import Runtime, device_clock, prepare_runtime, scoped_numerics
from ..storage import DistilledSet, atomic_write_text, load_distilled, save_distilled, write_json
from ..versions import package_versions
from .contract import DistillContext, DistillStep



@dataclass
class Progress:
    """Where a run stands: what the loop carries from one section to the next."""

    state: dict
    completed: int
    history: list
    saved: int | None = None  # the iteration the checkpoint on disk holds
    interrupted: bool = False
    mid_step: bool = False  # interrupted inside a step: the state may hold part of it
    stopped_early: bool = False
    terminated: bool = False  # the stop came as SIGTERM (a scheduler's), not Ctrl-C
    leg_started: float = field(default_factory=time.perf_counter)  # this command's start
    seconds_before: float = 0.0  # what earlier legs spent up to the checkpoint this one resumed
    # the intra-op thread counts earlier legs ran with; None: a checkpoint from before they were kept
    threads_before: list[int] | None = field(default_factory=list)

    def seconds(self) -> float:
        """What the run has spent: the earlier legs up to their checkpoint, and this one so far."""
        return self.seconds_before + time.perf_counter() - self.leg_started

    def threads(self) -> list[int] | None:
        """Every thread count the run's seconds were spent with (None when an earlier leg's is unknown)."""
        return None if self.threads_before is None else sorted({*self.threads_before, torch.get_num_threads()})


@scoped_numerics
def run_distillation(config: RunConfig, registry: Registry, out: str | Path | None = None,
                     progress: bool = True, resume: bool = False, overwrite: bool = False) -> DistilledSet:
    """Distil ``config``'s dataset; write the set, its meta, history and the resolved config to ``out``.

    A fresh run into a folder that holds a set needs ``overwrite``, and replaces it only once it has
    a checkpoint (run/folder.py). ``resume`` continues the run in ``out``; a larger
    ``distill.iterations`` than the run's extends it.
    """
    # -- set up: every part built, and so validated, before anything is written --------------------
    # On several ranks (torchrun) a bad input stops every rank with the failing rank's error, and
    # only rank 0 writes and shows progress (docs/distributed.md).
    world = current_world()
    progress = progress and world.is_main
    if not resume and restart_count() and broadcast_from(world.is_main and continues_here(out, config), world=world):
        # torchrun --max-restarts started this command again after a rank died: the run it began
        # continues from its last checkpoint instead of starting over
        resume, overwrite = True, False
    with fail_together(world):
        runtime = prepare_runtime(config, "distillation")
        device = runtime.device
        check_parts(config, registry)
        output = RunOutput(out, resume=resume, overwrite=overwrite, device=device, world=world)
        distiller, context = build_parts(config, registry, device, progress)
        iterations = iteration_budget(distiller, config)
    resolved = config.to_dict()

    # -- resume, or start ----------------------------------------------------------------------------
    started = time.perf_counter()
    with fail_together(world):
        if resume:
            run = resume_run(output.read_from, device, resolved, iterations, judge_finished=world.is_main)
        else:
            run = Progress(distiller.init(context), 0, [])
    if isinstance(run, Progress):
        run.leg_started = started  # the initialisation (a teacher, a feature network) counts too
    # finished at this budget: its set, and what was derived, stay. Rank 0 judges from the folder and
    # every rank follows, so no rank iterates while another has returned.
    if broadcast_from(isinstance(run, DistilledSet), world=world):
        return run if isinstance(run, DistilledSet) else load_distilled(output.read_from)
    output.open(resolved)
    try:
        # -- iterate -------------------------------------------------------------------------------
        iterate(run, distiller, context, config, iterations, progress, output)
        # -- package -------------------------------------------------------------------------------
        result = package(run, distiller, context, config, iterations, run.seconds(), runtime)
        # -- save ----------------------------------------------------------------------------------
        output.save(run, result)
    except BaseException:
        output.discard()  # a fresh run that failed before its first checkpoint leaves no trace
        raise
    if run.interrupted:
        output.discard()
        raise Terminated if run.terminated else KeyboardInterrupt
    if world.is_main:
        notify("rdd_distill_finished", result=result)
    return result


class RunOutput:
    """Where a run writes: nowhere, its own folder (a resume), or a staged folder that replaces the
    target at the first checkpoint (a fresh run). On several ranks only rank 0 writes; the others
    read a resumed run's checkpoint from the folder (``read_from``)."""

    def __init__(self, out: str | Path | None, *, resume: bool, overwrite: bool,
                 device: torch.device | None = None, world: World | None = None) -> None:
        if resume and not out:
            raise RddError("resume needs the run folder")
        self.read_from = Path(out) if resume else None
        writes = (world or current_world()).is_main
        self.staged = StagedRun(out, overwrite=overwrite) if out and not resume and writes else None
        self.folder = check_writable(out, "run folder") if resume and writes else None
        if self.folder is not None:  # the resumed set replaces the one its evaluations describe
            check_no_foreign_files(self.folder, out, "resuming (it replaces the evaluated set)")
        self.fingerprint = ""
        self.device = device  # recorded in checkpoints: a resume on another device type says so

    @property
    def where(self) -> Path | None:
        return self.staged.path if self.staged is not None else self.folder

    def open(self, resolved: dict) -> None:
        self.fingerprint = run_fingerprint(resolved)
        if self.staged is not None:
            self.staged.open()
        if self.where is not None:
            atomic_write_text(self.where / CONFIG_FILE, to_toml(resolved))

    def checkpoint(self, run: Progress) -> None:
        if self.where is None:
            return
        save_checkpoint(self.where, iteration=run.completed, state=run.state, history=run.history,
                        fingerprint=self.fingerprint, device=self.device, seconds=run.seconds(),
                        cpu_threads=run.threads())
        run.saved = run.completed
        if self.staged is not None:
            self.staged.publish()  # the new run has something to show: it replaces the old one now

    def save(self, run: Progress, result: DistilledSet) -> None:
        """The set, with a checkpoint first when Ctrl-C stopped the run between steps. A run
        interrupted inside a step before its first checkpoint has nothing whole to show."""
        if run.interrupted and not run.mid_step and run.saved != run.completed:
            self.checkpoint(run)
        if self.where is None or (run.interrupted and self.staged is not None and not self.staged.published):
            return
        if self.staged is not None:
            self.staged.publish()
        save_run(self.where, result, run.history)

    def discard(self) -> None:
        if self.staged is not None:
            self.staged.discard()  # a no-op once published: the new run's checkpoints stay


def build_parts(config: RunConfig, registry: Registry, device: torch.device, progress: bool):
    """The distiller and what it may use: the training split on ``device``, a model factory, the
    regularizer."""
    dcfg = config.distill
    torch.manual_seed(config.seed)
    train = load_split(registry, config, "train")
    train.images, train.labels = train.images.to(device), train.labels.to(device)
    distiller = registry.create("distillers", dcfg.distiller, **dcfg.params)
    context = DistillContext(
        train=train, ipc=dcfg.ipc, iterations=dcfg.iterations,
        make_model=model_factory(registry, config.backbone.name, config.backbone.params, train, device),
        regularizer=registry.create("regularizers", dcfg.regularizer, **dcfg.regularizer_params),
        device=device, progress=progress, seed=config.seed, world=current_world(),
    )
    return distiller, context


def continues_here(out: str | Path | None, config: RunConfig) -> bool:
    """Whether ``out`` holds a checkpoint of this very run (its config, any budget)."""
    return out is not None and checkpoint_fingerprint(out) == run_fingerprint(config.to_dict())


def iteration_budget(distiller, config: RunConfig) -> int:
    """0 for a one-shot selector; otherwise the config's, which must be at least 1."""
    if not getattr(distiller, "iterations_needed", True):
        return 0
    if config.distill.iterations == 0:
        raise RddError(f"distiller {config.distill.distiller!r} needs iterations; 0 would give its initial images")
    return config.distill.iterations


def resume_run(folder: Path, device: torch.device, resolved: dict, iterations: int,
               judge_finished: bool = True) -> Progress | DistilledSet:
    """The run as its last checkpoint left it, random streams restored; its saved set instead when
    it is finished at this budget (judged only with ``judge_finished``: rank 0's call)."""
    completed, state, history, rng = load_checkpoint(folder, device, resolved)
    if completed > iterations:
        raise RddError(f"{folder} is at iteration {completed}; --iterations {iterations} cannot shorten it")
    finished = _finished_set(folder, iterations) if completed == iterations and judge_finished else None
    if finished is not None:
        return finished
    restore_rng(rng)
    return Progress(state, completed, history, saved=completed, seconds_before=checkpoint_seconds(folder),
                    threads_before=checkpoint_threads(folder))


def _finished_set(folder: Path, iterations: int) -> DistilledSet | None:
    """The folder's set when its run finished at ``iterations``; None when unreadable (the resume
    then writes it again) or unfinished."""
    try:
        distilled = load_distilled(folder)
    except RddError:
        return None
    meta = distilled.meta
    return distilled if meta.get("completed_iterations") == iterations and not meta.get("interrupted") else None


def check_parts(config: RunConfig, registry: Registry) -> None:
    """Unknown names and parameters that do not fit their part fail here, in one line."""
    dcfg = config.distill
    registry.check_params("datasets", config.data.dataset, **config.data.params)
    registry.check_params("backbones", config.backbone.name, **config.backbone.params)
    registry.check("distillers", dcfg.distiller, **dcfg.params)
    registry.check("regularizers", dcfg.regularizer, **dcfg.regularizer_params)


def iterate(run: Progress, distiller, context: DistillContext, config: RunConfig, iterations: int,
            progress: bool, output: RunOutput) -> None:
    """Step the distiller from ``run.completed`` to ``iterations``; checkpoint as configured; stop
    between steps on Ctrl-C (``run.interrupted``) or when a plugin asks (``run.stopped_early``)."""
    dcfg = config.distill
    every = dcfg.checkpoint_every
    with stop_between_steps("distillation") as stop, \
            bar(total=iterations, initial=run.completed, desc=f"distill {dcfg.distiller}+{dcfg.regularizer}",
                enabled=progress) as pbar:
        try:
            for it in range(run.completed, iterations):
                t0 = device_clock(context.device)
                context.iteration = it  # the work key of this step's draws
                losses = distiller.step(run.state, context)
                bad = _non_finite(losses, run.state)
                if bad:
                    kept = f"; the last good checkpoint (iteration {run.saved}) is kept" if run.saved is not None else ""
                    raise RddError(f"iteration {it}: non-finite {bad}{kept}; lower the learning rates")
                seconds = device_clock(context.device) - t0
                run.history.append({"iteration": it, "seconds": round(seconds, 4), **losses})
                run.completed = it + 1
                if every and (run.completed % every == 0 or run.completed == iterations):
                    output.checkpoint(run)
                pbar.update(1)
                pbar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()})
                # plugins watch on rank 0; a stop there, or a Ctrl-C on any rank, stops every rank
                # after this same step
                asked = context.world.is_main and _plugins_ask_to_stop(run, distiller, context, config,
                                                                       iterations, losses)
                asked, interrupted = any_rank([asked, stop.requested], context.device, context.world)
                if asked:
                    run.stopped_early = True
                    return
                if interrupted:
                    run.interrupted, run.terminated = True, stop.terminated
                    return
        except KeyboardInterrupt:
            # A second Ctrl-C, mid-step: the state may hold part of a step, so no checkpoint of it;
            # the set is kept and marked, and --resume continues from the last checkpoint.
            run.interrupted = run.mid_step = True


def _plugins_ask_to_stop(run: Progress, distiller, context, config, iterations, losses) -> bool:
    view = DistillStep(iteration=run.completed, iterations=iterations, losses=dict(losses),
                       # a fresh copy per call: a plugin that mutates it cannot touch the run
                       seconds=run.history[-1]["seconds"], config=config.to_dict(),
                       images=lambda: current_images(distiller, run.state, context))
    with forked_rng(context.device):
        answers = notify("rdd_distill_step", step=view)
    return any(r is True for r in answers)


def package(run: Progress, distiller, context: DistillContext, config: RunConfig, iterations: int,
            seconds: float, runtime: Runtime) -> DistilledSet:
    """The distiller's result with its meta: what made it, on what, and how far its run got."""
    dcfg = config.distill
    threads = run.threads()
    # a relabelling distiller adds soft labels, and with per-crop relabelling the crop boxes
    images, labels, *relabel = distiller.result(run.state, context)
    if len(relabel) > 2:
        raise RddError(f"{dcfg.distiller}: result() gave {len(relabel) + 2} tensors; expected images, labels"
                       f"[, soft_labels[, crop_boxes]]")
    soft_labels, crop_boxes = ([t.detach().cpu() for t in relabel] + [None, None])[:2]
    meta = {
        "dataset": context.train.meta(),
        "ipc": dcfg.ipc,
        "distiller": dcfg.distiller,
        "regularizer": dcfg.regularizer,
        "backbone": config.backbone.name,
        "seed": config.seed,
        "iterations": iterations,
        "completed_iterations": run.completed,
        "interrupted": run.interrupted,
        "stopped_early": run.stopped_early,
        "seconds": round(seconds, 3),
        # seconds compare only between runs of the same intra-op thread count (docs/decisions.md):
        # the one every leg ran with; null when the legs differed or an early one is unknown
        "cpu_threads": threads[0] if threads is not None and len(threads) == 1 else None,
        "device": str(context.device),
        "runtime": runtime.record(),
        "config": config.to_dict(),
        "versions": package_versions(),
    }
    return DistilledSet(images.detach().cpu(), labels.detach().cpu(), meta, soft_labels, crop_boxes)


def save_run(folder: Path, result: DistilledSet, history: list) -> None:
    """The set, its meta and history; what rdd derived from the folder's previous set goes (a
    resume checked at its start that those folders hold nothing else)."""
    for derived in derived_folders(folder):
        shutil.rmtree(derived)
        print(f"rdd: removed {derived} (it described the set this run replaced)", file=sys.stderr)
    save_distilled(folder, result.images, result.labels, result.meta, result.soft_labels, result.crop_boxes)
    write_json(folder / HISTORY_FILE, {"history": history})


def _non_finite(losses: dict[str, float], state: dict) -> str:
    bad = [f"{k}={v}" for k, v in losses.items() if not math.isfinite(v)]
    floats = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    by_device: dict[torch.device, list[str]] = {}
    for k, v in floats.items():
        by_device.setdefault(v.device, []).append(k)
    for names in by_device.values():  # one read per device, not one per tensor (a GPU waits for each)
        finite = torch.stack([torch.isfinite(floats[k]).all() for k in names]).tolist()
        bad += [f"state {k}" for k, ok in zip(names, finite) if not ok]
    return ", ".join(bad)


def current_images(distiller, state: dict, context: DistillContext) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh copies of the images and labels so far, for a plugin watching the run.

    ``distiller.preview(state, context)`` where it has one (no relabelling: sre2l's result() runs its
    teacher on every crop view), else the first two tensors of ``result``. Under a forked RNG, so a
    plugin that looks (or not) never changes the run's random stream, and resume stays exact.
    """
    with forked_rng(context.device):
        show = getattr(distiller, "preview", None)
        tensors = show(state, context) if show is not None else distiller.result(state, context)[:2]
        return tuple(t.detach().clone() for t in tensors)


__all__ = ["run_distillation", "check_backbone"]
