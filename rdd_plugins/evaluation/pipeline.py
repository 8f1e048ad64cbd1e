"""The evaluation loop: per backbone and seed a fresh model, clean accuracy, then every planned
attack at every eps of its threat model.

Like the distillation loop it names no concrete component: backbones, attacks and suites come from
the registry by name.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from ..config import RunConfig, parse_eps
from ..data import ImageData
from ..distributed.work import broadcast_from, broadcast_tensors, fail_together, gather_to_all
from ..distributed.world import World, current_world
from ..errors import RddError
from ..lifecycle import notify
from ..randomness import seeded
from ..registry import Registry
from ..run.parts import load_test_split, model_factory, set_label, train_on_set, unfinished
from ..runtime import Runtime, device_clock, prepare_runtime, scoped_numerics
from ..storage import DistilledSet
from .metrics import robustness_indices, success_rate, summarize
from .robust import clean_correct, robust_correct
from .seed_cache import ModelCache, SeedCache, set_digest
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
                name: str, world: World | None = None) -> tuple[dict, dict]:
    """Every planned attack at every eps; (per attack -> eps -> record, threat -> eps -> worst case).

    Cascade: at one threat model and eps, each attack runs only on the points every attack before
    it failed to break, and eps grows from small to large on the points robust at the smaller eps
    (an adversarial example inside a small ball is inside every larger one). An attack's ``robust``
    is then cumulative. Otherwise each attack runs on all clean-correct points at every eps. The
    worst case (correct under every attack at that eps and every smaller one) breaks the same points
    either way, up to the attacks' random starts.

    Random draws are keyed by work: an attack is built under ``(seed, "attack", name, eps)`` and its
    batch i draws under ``(seed, "attack", name, eps, i)``, so they depend on neither what ran
    before nor how many ranks share the batches (robust_correct).
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
                key = (seed, "attack", a.attack, text)
                with seeded(*key, device=x.device):  # an attack that draws when it is built
                    attack = registry.create("attacks", a.attack, model, eps, **a.params)
                if not callable(attack):
                    raise RddError(f"attack {a.attack!r} (plugin {registry.get('attacks', a.attack).plugin!r}) "
                                   f"returned {type(attack).__name__}, not a callable (images, labels) -> images")
                t0 = device_clock(x.device)
                survived = robust_correct(model, attack, x, y, target, batch_size, progress=progress,
                                          desc=f"{name} {a.attack} eps={text}", eps=eps, threat_model=threat,
                                          key=key, world=world)
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
                 seeds_dir: str | Path | None = None, models_dir: str | Path | None = None,
                 world: World | None = None) -> list[dict]:
    """Train ``config.evaluate.seeds`` fresh models per backbone on ``distilled`` and attack each.

    Returns one result per backbone (the rows of results.json). With ``seeds_dir`` every finished
    (backbone, seed) is kept there and reused by a rerun of the same evaluation (seed_cache.py).
    With ``models_dir`` (one process only) the trained models are kept there too, and any
    evaluation of the set under other attacks attacks them instead of training them again.

    On several ranks (``world``, torchrun's by default) the (backbone, seed) models still to compute
    are dealt round-robin and trained in parallel, a round of one per rank at a time; then, model by
    model, its owner sends it to every rank and all of them attack it, each on its share of the
    points. Every model is seeded by its seed and every attack batch by its work key, so the rows are
    those one process computes (timings aside), the same on every rank. Rank 0 alone reads and
    writes the seed cache, prints and notifies.
    """
    world = world or current_world()
    # -- set up: the attack plan, the test split and every backbone built before any training -------
    with fail_together(world):  # a bad input on one rank stops every rank, not only that one
        runtime = prepare_runtime(config, "evaluation")
        device = runtime.device
        specs = backbone_specs(config)
        for backbone, params in specs:
            registry.get("backbones", backbone)
        plan, cascade = attack_plan(registry, config)
        test = test or load_test_split(registry, config)
        check_set_fits(distilled, test)
        if config.evaluate.augment != "none" and distilled.soft_labels is not None:
            # the teacher labelled the images (or crop views) as they are: an augmented image would
            # be trained towards another image's label
            raise RddError(f"evaluate.augment = {config.evaluate.augment!r} needs a set with hard labels; "
                           f"this one has soft labels (its teacher's, made on the images unaugmented)")
        factories = [(b, p, model_factory(registry, b, p, test, device)) for b, p in specs]
        for _, _, make_model in factories:
            make_model()  # a backbone that cannot be built fails now, not after minutes of training
    name = label or set_label(distilled)
    note = unfinished(distilled)
    if note and world.is_main:
        print(f"rdd: warning: {name}: the set is unfinished ({note}); its results describe a half-made set",
              file=sys.stderr)
    x_test, y_test = test.images.to(device), test.labels.to(device)
    # the key holds str(device), "cuda" on every CUDA rank: it does not depend on the rank
    sha = set_digest(distilled) if seeds_dir is not None or models_dir is not None else ""
    cache = None if seeds_dir is None else SeedCache(
        seeds_dir, config.to_dict(), sha, (test.name, int(x_test.shape[0]), str(device)))
    # one process only: on several, the models of a round are trained in parallel and shared
    models = None if models_dir is None or world.distributed else ModelCache(
        models_dir, config.to_dict(), sha, str(device))
    tags = [name if len(specs) == 1 else f"{name} [{backbone}]" for backbone, _ in specs]
    seeds = range(config.seed, config.seed + config.evaluate.seeds)
    jobs = [(b, seed) for b in range(len(factories)) for seed in seeds]  # (backbone index, seed), in row order

    # -- reuse: rank 0 reads the finished seeds, every rank takes what it found ----------------------
    done: list[dict | None] = [None] * len(jobs)
    if cache is not None:
        if world.is_main:
            done = [cache.get(factories[b][0], factories[b][1], seed) for b, seed in jobs]
            for (b, seed), found in zip(jobs, done):
                if found is not None:
                    print(f"rdd: {tags[b]} seed {seed}: reused (finished earlier in {cache.folder})",
                          file=sys.stderr)
        done = broadcast_from(done, 0, world)

    # -- evaluate: the models still to do, a round of one per rank at a time -------------------------
    # Model k of those still to do belongs to rank k % size (dealt_to's round-robin). A round trains
    # its models in parallel (phase 1), then each owner sends its model to every rank and all attack
    # it together (phase 2), and rank 0 caches it: an interruption loses at most one round (one
    # model on one process, as before).
    todo = [j for j, found in enumerate(done) if found is None]
    for first in range(0, len(todo), world.size):
        round_jobs = todo[first:first + world.size]
        trained, train_seconds = None, None
        with fail_together(world):
            if world.rank < len(round_jobs):
                b, seed = jobs[round_jobs[world.rank]]
                backbone, backbone_params, make_model = factories[b]
                kept = None if models is None else models.get(backbone, backbone_params, seed, make_model)
                if kept is not None:
                    print(f"rdd: {tags[b]} seed {seed}: trained model reused (from {models.folder})", file=sys.stderr)
                    trained, train_seconds = kept[0], 0.0  # what this evaluation spent training
                else:
                    trained, train_seconds = train_seed(make_model, distilled, config, seed=seed, device=device,
                                                        progress=progress and world.is_main, tag=tags[b])
                    if models is not None:
                        models.put(backbone, backbone_params, seed, trained, train_seconds)
        train_seconds = gather_to_all(train_seconds, world)
        for owner, j in enumerate(round_jobs):
            (backbone, backbone_params, make_model), seed = factories[jobs[j][0]], jobs[j][1]
            model = trained if owner == world.rank else make_model().eval()
            share_model(model, owner, world)
            attacked = attack_seed(model, config, registry, plan, cascade, x_test, y_test, seed=seed,
                                   device=device, progress=progress, tag=tags[jobs[j][0]], world=world)
            # rank 0's timings (each rank measured its own), so that every rank's rows are the same
            done[j] = broadcast_from(seed_result(seed, attacked, train_seconds[owner]), 0, world)
            if cache is not None and world.is_main:
                cache.put(backbone, backbone_params, seed, done[j])

    rows = []
    for b, (backbone, backbone_params, _) in enumerate(factories):
        per_seed = [done[j] for j, (jb, _) in enumerate(jobs) if jb == b]
        row = result_row(distilled, config, test, name, backbone, backbone_params, plan, cascade, per_seed,
                         runtime)
        if world.is_main:
            notify("rdd_evaluation_finished", report=row)
        rows.append(row)
    return rows


def seed_result(seed: int, attacked: dict, train_seconds: float) -> dict:
    """One model's entry of ``per_seed``, from :func:`attack_seed`'s record and its training time."""
    return {"seed": seed, "clean": attacked["clean"], "attacks": attacked["attacks"], "worst": attacked["worst"],
            "train_seconds": train_seconds, "clean_seconds": attacked["clean_seconds"],
            "attack_seconds": attacked["attack_seconds"]}


def share_model(model: nn.Module, owner: int, world: World | None = None) -> None:
    """Rank ``owner``'s parameters and buffers into every rank's ``model`` (built by the same factory,
    so with the same shapes), bitwise. One process: nothing to do."""
    world = world or current_world()
    if not world.distributed:
        return
    tensors = [t.detach() for t in (*model.parameters(), *model.buffers())]
    staged = [t if t.is_contiguous() else t.contiguous() for t in tensors]  # e.g. channels_last weights
    broadcast_tensors(staged, owner, world)
    for t, s in zip(tensors, staged):
        if s is not t:
            t.copy_(s)


def train_seed(make_model, distilled: DistilledSet, config: RunConfig, *, seed: int, device: torch.device,
               progress: bool, tag: str) -> tuple[nn.Module, float]:
    """A fresh model trained on the set, seeded by ``seed`` alone (its initialisation, its batches);
    with the seconds it took."""
    torch.manual_seed(seed)
    t0 = device_clock(device)
    model = train_on_set(make_model, distilled, config, device, progress=progress, desc=f"{tag} train seed {seed}")
    return model, round(device_clock(device) - t0, 3)


def attack_seed(model: nn.Module, config: RunConfig, registry: Registry, plan: list[PlannedAttack],
                cascade: bool, x_test: torch.Tensor, y_test: torch.Tensor, *, seed: int, device: torch.device,
                progress: bool, tag: str, world: World | None = None) -> dict:
    """A trained model's clean-correct test points and the attack plan on them (every rank, each on
    its share of the batches; progress on rank 0)."""
    t1 = device_clock(device)
    # clean predictions are cheap: every rank makes them all, in the same batches as one process
    correct = clean_correct(model, x_test, y_test, config.evaluate.eval_batch_size)
    t2 = device_clock(device)
    per_attack, worst = run_attacks(model, registry, plan, cascade, x_test, y_test, correct, seed=seed,
                                    batch_size=config.evaluate.eval_batch_size, progress=progress, name=tag,
                                    world=world)
    return {
        "clean": float(correct.float().mean()),
        "attacks": per_attack,
        "worst": worst,
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
            "epochs": ecfg.epochs, "augment": ecfg.augment, "suite": ecfg.suite, "cascade": cascade,
            "attacks": [{"attack": a.attack, "params": a.params, "threat_model": a.threat_model,
                         "eps": list(a.eps)} for a in plan],
            "n_test": int(test.images.shape[0]), "device": str(runtime.device), "runtime": runtime.record(),
        },
        "per_seed": per_seed,
        "summary": _summary(per_seed, plan, cascade),
    }
