"""``rdd quickstart``: the main job on its embedded default.

Fashion-MNIST, IPC 10: a random real subset, plain gradient matching (DC), gradient matching with
GUARD's curvature regularizer, SRe2L, and SRe2L with a curvature-regularized teacher (GUARD's
published pipeline), evaluated the same way. Sized for 2 CPU cores (see README for the measured
time); every knob can be overridden with --set.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from .config import RunConfig, merge, resolve
from .config.schema import without_keys_added_later
from .distillation.loop import run_distillation
from .distributed.work import broadcast_from, fail_together
from .distributed.world import current_world
from .errors import RddError
from .evaluation.pipeline import attack_plan, backbone_specs, evaluate_set
from .evaluation.report import plot_image_grid, write_report
from .plugins import get_registry
from .run.folder import CHECKPOINT_FILE, CONFIG_FILE, check_writable
from .run.parts import load_test_split
from .storage import load_distilled

# CPU-sized, so that the whole quickstart takes under 10 minutes on 2 cores (docs/decisions.md):
# width-32 ConvNet, 12 iterations of (outer, inner) = (10, 10) instead of DC's (10, 50), batch_real
# 64; evaluation on the first 500 test points.
QUICKSTART = {
    "seed": 0,
    "data": {"dataset": "fashion-mnist"},
    "backbone": {"name": "convnet", "params": {"width": 32}},
    "distill": {
        "ipc": 10,
        "iterations": 12,
        "params": {"batch_real": 64, "outer_loop": 10, "inner_loop": 10},
    },
    "evaluate": {
        "seeds": 2,
        "epochs": 300,
        "n_test": 500,
        "attack": "pgd",
        "attack_params": {"steps": 10},
        "eps": ["2/255", "4/255", "8/255", "16/255", "0.1"],
    },
}

CURVATURE = {"regularizer": "curvature", "regularizer_params": {"h": 1.0, "lam": 0.3}}
# GUARD's published pipeline is SRe2L whose teacher trains with the curvature term. Recover matches
# the teacher's BatchNorm statistics, so both SRe2L sets are made and evaluated on the BatchNorm
# ConvNet: compare them with each other. 300 recover steps, a 1-epoch teacher (the teacher is most
# of sre2l's cost); the teacher's λ = 1, not gm's 0.3 (docs/decisions.md).
SRE2L = {"backbone": {"params": {"width": 32, "norm": "batch"}},
         "distill": {"distiller": "sre2l", "iterations": 300, "params": {"teacher_epochs": 1}}}

METHODS = {
    "random": {"distill": {"distiller": "random", "regularizer": "none", "params": {}}},
    "gm": {"distill": {"distiller": "gm", "regularizer": "none"}},
    "gm+curvature": {"distill": {"distiller": "gm", **CURVATURE}},
    "sre2l": merge(SRE2L, {"distill": {"regularizer": "none"}}),
    "sre2l+curvature": merge(SRE2L, {"distill": {"regularizer": "curvature",
                                                 "regularizer_params": {"h": 1.0, "lam": 1.0}}}),
}


def method_configs(overrides: dict | None = None) -> dict[str, RunConfig]:
    """One config per method: QUICKSTART <- the method <- the user's overrides.

    The user's ``distill.params`` are meant for gradient matching: only the ``gm`` methods take them
    (the others would reject gm's keys).
    """
    configs = {}
    for label, method in METHODS.items():
        over = copy.deepcopy(overrides or {})
        if method["distill"]["distiller"] != "gm":
            over.get("distill", {}).pop("params", None)
        user_backbone = over.get("backbone", {})
        if method["distill"]["distiller"] == "sre2l" and user_backbone.get("params") is not None \
                and user_backbone.get("name", "convnet") == "convnet":
            user_backbone["params"]["norm"] = "batch"  # recover needs BatchNorm, whatever else the user sets
        configs[label] = resolve(base=merge(QUICKSTART, method), overrides=over)
    return configs


def _finished_set(folder: Path, config: RunConfig):
    """A set distilled earlier with this exact config (an interrupted quickstart resumes there)."""
    try:
        ds = load_distilled(folder)
    except RddError:
        return None
    if ds.meta.get("interrupted") or json.dumps(without_keys_added_later(ds.meta.get("config") or {}),
                                                sort_keys=True) != json.dumps(config.to_dict(), sort_keys=True):
        return None
    return ds


def _resumable(folder: Path, config: RunConfig) -> bool:
    """An interrupted quickstart left a checkpoint of this exact config: continue it."""
    try:
        return (folder / CHECKPOINT_FILE).is_file() and \
            resolve(config_file=folder / CONFIG_FILE).to_dict() == config.to_dict()
    except RddError:
        return False


def run_quickstart(out: str | Path = "runs/quickstart", overrides: dict | None = None,
                   progress: bool = True) -> dict:
    world = current_world()  # on several ranks (torchrun) each method's work is shared; rank 0 writes
    progress = progress and world.is_main
    with fail_together(world):  # a bad input fails on every rank, with the failing rank's error
        out = check_writable(out, "quickstart folder")
        registry = get_registry()
        configs = method_configs(overrides)
        first = next(iter(configs.values()))
        for cfg in configs.values():  # a typo in the evaluation settings fails now, not after distilling
            attack_plan(registry, cfg)
            for backbone, _ in backbone_specs(cfg):
                registry.get("backbones", backbone)
        test = load_test_split(registry, first)
    results, grids, timings = [], {}, {}
    for label, cfg in configs.items():
        folder = out / "sets" / label.replace("+", "_")
        t0 = time.perf_counter()
        # rank 0 decides from the folder, so every rank takes the same path
        found = _finished_set(folder, cfg) if world.is_main else None
        reused, resumable = broadcast_from((found is not None, _resumable(folder, cfg)) if world.is_main else None,
                                           world=world)
        distilled = found if found is not None or not reused else load_distilled(folder)  # rank 0 read it once
        if distilled is None:  # the quickstart owns its sets' folders: a stale one is replaced
            distilled = run_distillation(cfg, registry, folder, progress=progress, resume=resumable,
                                         overwrite=True)
        t1 = time.perf_counter()
        rows = evaluate_set(distilled, cfg, registry, test=test, label=label, progress=progress,
                            seeds_dir=out / "seeds" / label.replace("+", "_"))
        t2 = time.perf_counter()
        results.extend(rows)
        timings[label] = {"distill_seconds": round(t1 - t0, 1), "evaluate_seconds": round(t2 - t1, 1),
                          "reused_distilled_set": reused}
        grid = out / f"images_{label.replace('+', '_')}.png"
        if world.is_main:
            plot_image_grid(distilled.images, distilled.labels, distilled.dataset["classes"], grid, label)
        grids[label] = grid
    timing_md = "\n".join(
        ["## Time", "", "| set | distill (s) | evaluate (s) |", "|---|---|---|"]
        + [f"| {k} | {v['distill_seconds']}{' (reused)' if v['reused_distilled_set'] else ''} | "
           f"{v['evaluate_seconds']} |" for k, v in timings.items()]
    )
    if not world.is_main:
        return {"results": results, "timings": timings, "out": str(out)}
    write_report(out, results, {k: c.to_dict() for k, c in configs.items()},
                 title="rdd quickstart: random, gm, gm+curvature (GUARD), sre2l, sre2l+curvature (GUARD)",
                 grids=grids,
                 extra_md=timing_md, extra_json={"timings": timings})
    return {"results": results, "timings": timings, "out": str(out)}
