"""The evaluation loop: fresh models per seed, clean accuracy, robust accuracy per eps.

Like the distillation loop it names no concrete component: backbone and attack come from the
registry by name.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..config import RunConfig, parse_eps, resolve_device
from ..data import ImageData
from ..distillation.loop import load_split, model_factory
from ..errors import RddError
from ..lifecycle import notify
from ..registry import Registry
from ..storage import DistilledSet
from .robust import clean_correct, robust_correct
from .train import train_model

RESULTS_SCHEMA = "rdd-results/1"


def summarize(values: list[float]) -> dict:
    """Mean and std in percent; std with ddof=0 over models, as DC reports it."""
    arr = np.asarray(values, dtype=np.float64) * 100.0
    return {"mean": round(float(arr.mean()), 3), "std": round(float(arr.std()), 3), "n": len(values)}


def load_test_split(registry: Registry, config: RunConfig) -> ImageData:
    test = load_split(registry, config, "test")
    if config.evaluate.n_test:
        # The first n points in order, as RobustBench takes them: the same points for every method.
        n = config.evaluate.n_test
        test = ImageData(test.images[:n], test.labels[:n], test.classes, test.mean, test.std, test.name)
    return test


def check_set_fits(distilled: DistilledSet, test: ImageData) -> None:
    """A set is evaluated on the test split of the dataset it was distilled from, nothing else."""
    ds = distilled.dataset
    mismatches = []
    if ds.get("name") and ds["name"] != test.name:
        mismatches.append(f"dataset {ds['name']!r} vs {test.name!r}")
    if list(ds["classes"]) != list(test.classes):
        mismatches.append("class names")
    if tuple(distilled.images.shape[1:]) != tuple(test.images.shape[1:]):
        mismatches.append(f"image shape {tuple(distilled.images.shape[1:])} vs {tuple(test.images.shape[1:])}")
    if mismatches:
        raise RddError(f"the distilled set does not fit the test data ({'; '.join(mismatches)})")


def evaluate_set(distilled: DistilledSet, config: RunConfig, registry: Registry, *,
                 test: ImageData | None = None, label: str = "", progress: bool = True) -> dict:
    """Train ``config.evaluate.seeds`` fresh models on ``distilled`` and attack each one."""
    ecfg = config.evaluate
    device = resolve_device(config.device)
    backbone = ecfg.backbone or config.backbone.name
    backbone_params = ecfg.backbone_params if ecfg.backbone else {**config.backbone.params, **ecfg.backbone_params}
    registry.get("attacks", ecfg.attack)
    test = test or load_test_split(registry, config)
    check_set_fits(distilled, test)
    x_test, y_test = test.images.to(device), test.labels.to(device)
    images, labels = distilled.images.to(device), distilled.labels.to(device)
    soft = distilled.soft_labels.to(device) if distilled.soft_labels is not None else None
    make_model = model_factory(registry, backbone, backbone_params, test, device)
    eps_list = [(str(e), parse_eps(e)) for e in ecfg.eps]
    name = label or f"{distilled.meta.get('distiller', '?')}+{distilled.meta.get('regularizer', '?')}"

    per_seed = []
    for i in range(ecfg.seeds):
        seed = config.seed + i
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        model = train_model(make_model(), images, labels, epochs=ecfg.epochs, lr=ecfg.lr,
                            momentum=ecfg.momentum, weight_decay=ecfg.weight_decay,
                            batch_size=ecfg.batch_size, progress=progress, desc=f"{name} train seed {seed}",
                            soft_labels=soft, temperature=ecfg.kd_temperature)
        t1 = time.perf_counter()
        correct = clean_correct(model, x_test, y_test, ecfg.eval_batch_size)
        robust = {}
        for text, eps in eps_list:
            attack = registry.create("attacks", ecfg.attack, model, eps, **ecfg.attack_params)
            if not callable(attack):
                raise RddError(f"attack {ecfg.attack!r} (plugin {registry.get('attacks', ecfg.attack).plugin!r}) "
                               f"returned {type(attack).__name__}, not a callable (images, labels) -> images")
            mask = robust_correct(model, attack, x_test, y_test, correct, ecfg.eval_batch_size,
                                  progress=progress, desc=f"{name} {ecfg.attack} eps={text}")
            robust[text] = float(mask.float().mean())
        per_seed.append({
            "seed": seed,
            "clean": float(correct.float().mean()),
            "robust": robust,
            "train_seconds": round(t1 - t0, 3),
            "attack_seconds": round(time.perf_counter() - t1, 3),
        })
    report = {
        "label": name,
        "set": {k: distilled.meta.get(k) for k in ("distiller", "regularizer", "ipc", "backbone", "seed",
                                                   "completed_iterations")},
        "dataset": test.name,
        "evaluation": {
            "backbone": backbone, "backbone_params": backbone_params, "seeds": ecfg.seeds,
            "epochs": ecfg.epochs, "attack": ecfg.attack, "attack_params": ecfg.attack_params,
            "eps": [t for t, _ in eps_list], "n_test": int(x_test.shape[0]), "device": str(device),
        },
        "per_seed": per_seed,
        "summary": {
            "clean": summarize([r["clean"] for r in per_seed]),
            "robust": {t: summarize([r["robust"][t] for r in per_seed]) for t, _ in eps_list},
        },
    }
    notify("rdd_evaluation_finished", report=report)
    return report
