"""The evaluation loop: per backbone and seed a fresh model, clean accuracy, then every planned
attack at every eps of its threat model.

Like the distillation loop it names no concrete component: backbones, attacks and suites come from
the registry by name.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..config import RunConfig, parse_eps
from ..data import ImageData
from ..errors import RddError
from ..lifecycle import notify
from ..registry import Registry
from ..run.parts import load_test_split, model_factory, set_label, train_on_set, unfinished
from ..runtime import Runtime, device_clock, prepare_runtime, scoped_numerics
from ..storage import DistilledSet
from .metrics import robustness_indices, success_rate, summarize
from .robust import clean_correct, robust_correct
from .seed_cache import SeedCache, set_digest
from .suites import PlannedAttack, plan_attacks

# 2: several attacks, threat models and backbones per set; per-attack success rates; indices.
RESULTS_SCHEMA = "rdd-results/2"


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


def backbone_specs(config: RunConfig) -> list[tuple[str, dict]]:
    """(name, params) per evaluation backbone. The distillation backbone keeps its own parameters
    (DC's protocol evaluates on the architecture the set was made with); ``backbone_params`` adds
    flat keys when one backbone runs, or a table per backbone name."""
    ecfg = config.evaluate
    names = [n.strip() for n in ecfg.backbone.split(",") if n.strip()] or [config.backbone.name]
    if len(set(names)) != len(names):
        raise RddError(f"a backbone is listed twice: {ecfg.backbone}")
    per = {n: v for n, v in ecfg.backbone_params.items() if n in names and isinstance(v, dict)}
    flat = {k: v for k, v in ecfg.backbone_params.items() if k not in per}
    stray = [k for k, v in flat.items() if isinstance(v, dict) and (":" in k or len(names) > 1)]
    if stray:
        raise RddError(f"evaluate.backbone_params has tables for backbones that do not run: {', '.join(stray)}")
    if flat and len(names) > 1:
        raise RddError(f"evaluate.backbone_params has flat keys ({', '.join(sorted(flat))}) but "
                       f"{len(names)} backbones run; give each its own table")
    specs = []
    for name in names:
        base = dict(config.backbone.params) if name == config.backbone.name else {}
        specs.append((name, {**base, **flat, **per.get(name, {})}))
    return specs


def attack_plan(registry: Registry, config: RunConfig) -> tuple[list[PlannedAttack], bool]:
    """The evaluate section's attack plan (suite, attacks, parameters, eps grids, cascade)."""
    ecfg = config.evaluate
    attacks = [a.strip() for a in ecfg.attack.split(",") if a.strip()]
    return plan_attacks(registry, suite=ecfg.suite, attacks=attacks, attack_params=ecfg.attack_params,
                        eps=ecfg.eps, eps_l2=ecfg.eps_l2, cascade=ecfg.cascade)


def run_attacks(model, registry: Registry, plan: list[PlannedAttack], cascade: bool, x: torch.Tensor,
                y: torch.Tensor, correct: torch.Tensor, *, seed: int, batch_size: int, progress: bool,
                name: str) -> tuple[dict, dict]:
    """Every planned attack at every eps; (per attack -> eps -> record, threat -> eps -> worst case).

    Cascade: at one threat model and eps, each attack runs only on the points every attack before
    it failed to break, and eps grows from small to large on the points robust at the smaller eps
    (an adversarial example inside a small ball is inside every larger one). An attack's ``robust``
    is then cumulative. Otherwise each attack runs on all clean-correct points at every eps. The
    worst case (correct under every attack at that eps and every smaller one) breaks the same points
    either way, up to the attacks' random starts.
    """
    n = x.shape[0]
    per_attack: dict = {a.attack: {} for a in plan}
    worst: dict = {}
    for threat in dict.fromkeys(a.threat_model for a in plan):
        group = [a for a in plan if a.threat_model == threat]
        robust_smaller = correct.clone()
        for text in sorted(group[0].eps, key=lambda e: parse_eps(e, threat)):
            eps = parse_eps(text, threat)
            alive = robust_smaller.clone() if cascade else correct.clone()
            for a in group:
                target = alive if cascade else correct
                # Each attack's random draws depend on the seed only, not on what ran before it.
                torch.manual_seed(seed)
                attack = registry.create("attacks", a.attack, model, eps, **a.params)
                if not callable(attack):
                    raise RddError(f"attack {a.attack!r} (plugin {registry.get('attacks', a.attack).plugin!r}) "
                                   f"returned {type(attack).__name__}, not a callable (images, labels) -> images")
                t0 = device_clock(x.device)
                survived = robust_correct(model, attack, x, y, target, batch_size, progress=progress,
                                          desc=f"{name} {a.attack} eps={text}", eps=eps, threat_model=threat)
                seconds = device_clock(x.device) - t0
                attacked, fooled = int(target.sum()), int((target & ~survived).sum())
                alive = alive & survived
                per_attack[a.attack][text] = {
                    # cascade: survived is a subset of the points alive before, so this is cumulative
                    "robust": float(survived.sum()) / n,
                    "success_rate": success_rate(attacked, fooled),  # None when nothing was left to attack
                    "attacked": attacked, "fooled": fooled, "seconds": round(seconds, 3),
                }
            if not cascade:
                alive = alive & robust_smaller  # the worst case still counts smaller-eps breaks
            robust_smaller = alive
            worst.setdefault(threat, {})[text] = float(alive.sum()) / n
    return per_attack, worst


def _rates(per_seed: list[dict], attack: str, eps: str) -> dict | None:
    rates = [r["attacks"][attack][eps]["success_rate"] for r in per_seed]
    rates = [v for v in rates if v is not None]
    return summarize(rates) if rates else None


def mean_timings(per_seed: list[dict]) -> tuple[float, list[float]]:
    """Mean over models of the clean-inference time and of every (attack, eps) time, in plan order:
    the times BEARD's AE and CREI take."""
    n = len(per_seed)
    first = per_seed[0]["attacks"]
    attack = [sum(r["attacks"][a][e]["seconds"] for r in per_seed) / n for a in first for e in first[a]]
    return sum(r["clean_seconds"] for r in per_seed) / n, attack


def _summary(per_seed: list[dict], plan: list[PlannedAttack], cascade: bool) -> dict:
    summary = {
        "clean": summarize([r["clean"] for r in per_seed]),
        "attacks": {
            a.attack: {
                e: {"robust": summarize([r["attacks"][a.attack][e]["robust"] for r in per_seed]),
                    "success_rate": _rates(per_seed, a.attack, e)}
                for e in a.eps
            }
            for a in plan
        },
        "worst": {t: {e: summarize([r["worst"][t][e] for r in per_seed]) for e in eps}
                  for t, eps in per_seed[0]["worst"].items()},
        # BEARD's and ROME's indices take each attack's accuracy on its own; cascaded accuracies are
        # cumulative and depend on the order, so the indices exist only for runs without cascade.
        "indices": None,
    }
    if not cascade:
        attacked = [summary["attacks"][a.attack][e]["robust"]["mean"] / 100 for a in plan for e in a.eps]
        clean_seconds, attack_seconds = mean_timings(per_seed)
        summary["indices"] = robustness_indices([summary["clean"]["mean"] / 100], attacked,
                                                [clean_seconds], attack_seconds)
    return summary


@scoped_numerics
def evaluate_set(distilled: DistilledSet, config: RunConfig, registry: Registry, *,
                 test: ImageData | None = None, label: str = "", progress: bool = True,
                 seeds_dir: str | Path | None = None) -> list[dict]:
    """Train ``config.evaluate.seeds`` fresh models per backbone on ``distilled`` and attack each.

    Returns one result per backbone (the rows of results.json). With ``seeds_dir`` every finished
    (backbone, seed) is kept there and reused by a rerun of the same evaluation (seed_cache.py).
    """
    # -- set up: the attack plan, the test split and every backbone built before any training -------
    runtime = prepare_runtime(config, "evaluation")
    device = runtime.device
    specs = backbone_specs(config)
    for backbone, params in specs:
        registry.get("backbones", backbone)
    plan, cascade = attack_plan(registry, config)
    test = test or load_test_split(registry, config)
    check_set_fits(distilled, test)
    factories = [(b, p, model_factory(registry, b, p, test, device)) for b, p in specs]
    for _, _, make_model in factories:
        make_model()  # a backbone that cannot be built fails now, not after minutes of training
    name = label or set_label(distilled)
    note = unfinished(distilled)
    if note:
        print(f"rdd: warning: {name}: the set is unfinished ({note}); its results describe a half-made set",
              file=sys.stderr)
    x_test, y_test = test.images.to(device), test.labels.to(device)
    cache = None if seeds_dir is None else SeedCache(
        seeds_dir, config.to_dict(), set_digest(distilled), (test.name, int(x_test.shape[0]), str(device)))

    # -- evaluate: per backbone, fresh models per seed (a rerun reuses the finished ones) ------------
    rows = []
    for backbone, backbone_params, make_model in factories:
        tag = name if len(specs) == 1 else f"{name} [{backbone}]"
        per_seed = []
        for seed in range(config.seed, config.seed + config.evaluate.seeds):
            done = cache.get(backbone, backbone_params, seed) if cache else None
            if done is not None:
                print(f"rdd: {tag} seed {seed}: reused (finished earlier in {cache.folder})", file=sys.stderr)
            else:
                done = evaluate_seed(make_model, distilled, config, registry, plan, cascade, x_test, y_test,
                                     seed=seed, device=device, progress=progress, tag=tag)
                if cache:
                    cache.put(backbone, backbone_params, seed, done)
            per_seed.append(done)
        row = result_row(distilled, config, test, name, backbone, backbone_params, plan, cascade, per_seed,
                         runtime)
        notify("rdd_evaluation_finished", report=row)
        rows.append(row)
    return rows


def evaluate_seed(make_model, distilled: DistilledSet, config: RunConfig, registry: Registry,
                  plan: list[PlannedAttack], cascade: bool, x_test: torch.Tensor, y_test: torch.Tensor, *,
                  seed: int, device: torch.device, progress: bool, tag: str) -> dict:
    """One fresh model: train it on the set, count clean-correct test points, run the attack plan."""
    torch.manual_seed(seed)
    t0 = device_clock(device)
    model = train_on_set(make_model, distilled, config, device, progress=progress, desc=f"{tag} train seed {seed}")
    t1 = device_clock(device)
    correct = clean_correct(model, x_test, y_test, config.evaluate.eval_batch_size)
    t2 = device_clock(device)
    per_attack, worst = run_attacks(model, registry, plan, cascade, x_test, y_test, correct, seed=seed,
                                    batch_size=config.evaluate.eval_batch_size, progress=progress, name=tag)
    return {
        "seed": seed,
        "clean": float(correct.float().mean()),
        "attacks": per_attack,
        "worst": worst,
        "train_seconds": round(t1 - t0, 3),
        "clean_seconds": round(t2 - t1, 4),
        "attack_seconds": round(device_clock(device) - t2, 3),
    }


def result_row(distilled: DistilledSet, config: RunConfig, test: ImageData, name: str, backbone: str,
               backbone_params: dict, plan: list[PlannedAttack], cascade: bool, per_seed: list[dict],
               runtime: Runtime) -> dict:
    """One row of results.json: the set, how it was evaluated, every seed and their summary."""
    ecfg = config.evaluate
    meta = distilled.meta
    return {
        "label": name,
        "backbone": backbone,
        "set": {**{k: meta.get(k) for k in ("distiller", "regularizer", "backbone", "seed", "iterations",
                                            "completed_iterations", "interrupted", "stopped_early")},
                "ipc": meta.get("ipc") or int(distilled.images.shape[0] // len(test.classes)),
                "unfinished": unfinished(distilled)},
        "dataset": test.name,
        "evaluation": {
            "backbone": backbone, "backbone_params": backbone_params, "seeds": ecfg.seeds,
            "epochs": ecfg.epochs, "suite": ecfg.suite, "cascade": cascade,
            "attacks": [{"attack": a.attack, "params": a.params, "threat_model": a.threat_model,
                         "eps": list(a.eps)} for a in plan],
            "n_test": int(test.images.shape[0]), "device": str(runtime.device), "runtime": runtime.record(),
        },
        "per_seed": per_seed,
        "summary": _summary(per_seed, plan, cascade),
    }
