"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import copy
import re
from pathlib import Path

from .config import ATTACK_PLAN_KEYS, RunConfig, config_from_dict, load_toml, merge, resolve, to_toml
from .errors import RddError
from .evaluation.pipeline import evaluate_set
from .evaluation.report import plot_image_grid, write_report
from .plugins import get_registry
from .storage import DistilledSet, atomic_write_text, load_distilled


def _as_config(config: RunConfig | dict | str | Path | None, overrides: dict | None) -> RunConfig:
    if isinstance(config, RunConfig):
        return config_from_dict(merge(config.to_dict(), overrides or {}))
    if isinstance(config, dict):
        return resolve(base=config, overrides=overrides)
    return resolve(config_file=config, overrides=overrides)


def distill(config: RunConfig | dict | str | Path | None = None, *, out: str | Path | None = None,
            progress: bool = True, overrides: dict | None = None, resume: bool = False) -> DistilledSet:
    """Distil a dataset. ``config``: a RunConfig, a nested dict, or a TOML path; ``overrides`` wins.

    ``resume=True`` continues the run in ``out`` from its last checkpoint, with the config saved
    there (pass no ``config``; ``overrides`` may only change ``device``).

    >>> distill({"data": {"dataset": "synthetic"}, "distill": {"ipc": 1, "iterations": 2}})  # doctest: +SKIP
    """
    from .distillation.loop import run_distillation

    if resume:
        if out is None:
            raise RddError("resume needs the run folder (out=...)")
        if config is not None or set(overrides or {}) - {"device"}:
            raise RddError(f"resume continues the run exactly as {Path(out) / 'config.toml'} says; "
                           f"only the device may be changed")
        config = Path(out) / "config.toml"
    cfg = _as_config(config, overrides)
    return run_distillation(cfg, get_registry(), out, progress=progress, resume=resume)


def evaluation_config(distilled: DistilledSet, config: RunConfig | dict | str | Path | None = None,
                      overrides: dict | None = None) -> RunConfig:
    """The set's own run config (dataset, backbone, seed) with the caller's evaluation settings on top."""
    # A set made elsewhere may carry no config: its dataset name is then the one thing to go by.
    base = copy.deepcopy(distilled.meta.get("config") or {"data": {"dataset": distilled.dataset.get("name", "")}})
    # The attack plan is one unit: a caller who names a suite or attacks gets none of the set's
    # stored attack settings (its eps grid or pgd steps would leak into the suite otherwise).
    caller = config.to_dict() if isinstance(config, RunConfig) else config if isinstance(config, dict) else \
        load_toml(config) if config is not None else {}
    asked = {**caller.get("evaluate", {}), **(overrides or {}).get("evaluate", {})}
    if {"suite", "attack"} & set(asked) and isinstance(base.get("evaluate"), dict):
        base["evaluate"] = {k: v for k, v in base["evaluate"].items() if k not in ATTACK_PLAN_KEYS}
    if isinstance(config, RunConfig):
        base = merge(base, config.to_dict())
    elif isinstance(config, dict):
        base = merge(base, config)
    elif config is not None:
        return resolve(config_file=config, overrides=overrides, base=base)
    return resolve(base=base, overrides=overrides)


def evaluate(distilled: DistilledSet | str | Path, config: RunConfig | dict | str | Path | None = None, *,
             out: str | Path | None = None, progress: bool = True, overrides: dict | None = None,
             label: str = "") -> list[dict]:
    """Train fresh models on a distilled set and attack them; one result per evaluation backbone
    (clean accuracy, per-attack and worst-case robust accuracy, mean ± std over seeds).

    With ``out``, writes results.json, report.md, the resolved config and plots there.
    """
    source = distilled if isinstance(distilled, (str, Path)) else None
    if source is not None:
        distilled = load_distilled(source)
    cfg = evaluation_config(distilled, config, overrides)
    registry = get_registry()
    # with out, finished seeds are kept there: rerunning an interrupted evaluation continues it
    seeds_dir = Path(out) / "seeds" if out is not None else None
    results = evaluate_set(distilled, cfg, registry, label=label, progress=progress, seeds_dir=seeds_dir)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.toml", to_toml(cfg.to_dict()))
        grid = out / "distilled_images.png"
        name = results[0]["label"]
        plot_image_grid(distilled.images, distilled.labels, distilled.dataset["classes"], grid, name)
        write_report(out, results, cfg.to_dict(), title=f"Evaluation of {source or name}", grids={name: grid})
    return results


def compare(runs: list[str | Path], out: str | Path | None = None, title: str = "Comparison") -> list[dict]:
    """Merge the results of several evaluations (folders or results.json files) into one table and
    one plot. Rows keep their labels; a label seen twice gets its run folder's name added."""
    from .evaluation.report import indices_across_ipcs, load_results

    if not runs:
        raise RddError("compare needs at least one run folder or results.json")
    pairs = [(_run_name(run), row) for run in runs for row in load_results(run)]
    counts: dict = {}
    for _, row in pairs:
        counts[(row["label"], row["backbone"])] = counts.get((row["label"], row["backbone"]), 0) + 1
    rows, seen = [], set()
    for run, row in pairs:
        if counts[(row["label"], row["backbone"])] > 1:  # the same method from several runs: say which
            label, k = f"{row['label']} ({run})", 2
            while (label, row["backbone"]) in seen:
                label, k = f"{row['label']} ({run} #{k})", k + 1
            row = {**row, "label": label}
        seen.add((row["label"], row["backbone"]))
        rows.append(row)
    datasets = {r["dataset"] for r in rows}
    if len(datasets) > 1:
        raise RddError(f"the runs evaluate different datasets ({', '.join(sorted(datasets))}); compare one at a time")
    if out is not None:
        pooled = indices_across_ipcs(rows)
        md = ""
        if pooled:
            md = "\n".join(["## Across IPCs (BEARD's pooled RRM / AEM / CREIM, ROME's I-RR)", "",
                             "| set | backbone | IPCs | I-RR | RR | AE | CREI |", "|---|---|---|---|---|---|---|"]
                            + [f"| {p['distiller']}+{p['regularizer']} | {p['backbone']} | "
                               f"{', '.join(map(str, p['ipc']))} | {p['I-RR']:.1f} | {p['RR']:.1f} | "
                               f"{p['AE']:.1f} | {p['CREI']:.1f} |" for p in pooled])
        write_report(out, rows, {"compared": [str(r) for r in runs]}, title=title, extra_md=md,
                     extra_json={"across_ipcs": pooled})
    return rows


def _run_name(run: str | Path) -> str:
    """A run's name for labels: its folder, skipping the generic results.json / evaluation parts."""
    path = Path(run)
    if path.suffix == ".json":
        path = path.parent if path.name == "results.json" else path.with_suffix("")
    if path.name == "evaluation":
        path = path.parent
    return path.name or str(run)


def benchmark(distilled: DistilledSet | str | Path, config: RunConfig | dict | str | Path | None = None, *,
              out: str | Path | None = None, dataset: str | None = None, threat_model: str = "Linf",
              eps: str | float | None = None, n_examples: int = 10000, batch_size: int = 500,
              name: str | None = None, progress: bool = True, overrides: dict | None = None) -> dict:
    """RobustBench's protocol for a distilled set: train one model on it (the config's seed, DC
    protocol), then AutoAttack (standard) on the first ``n_examples`` test points in order.

    CIFAR-10/100 run through ``robustbench.eval.benchmark`` itself; other datasets (Fashion-MNIST)
    through the same AutoAttack directly. Writes benchmark.json and a RobustBench ModelInfo JSON.
    """
    import torch

    from rdd_integrations import robustbench_protocol as rb

    from .config import parse_eps
    from .distillation.loop import load_split, model_factory
    from .evaluation.pipeline import backbone_specs, check_set_fits
    from .evaluation.train import train_model
    from .runtime import prepare_device
    from .storage import write_json
    from .versions import package_versions

    source = distilled if isinstance(distilled, (str, Path)) else None
    if source is not None:
        distilled = load_distilled(source)
    cfg = evaluation_config(distilled, config, overrides)
    set_dataset = cfg.data.dataset
    dataset = dataset or set_dataset
    if dataset != set_dataset:
        raise RddError(f"the set was distilled from {set_dataset!r}; it cannot be benchmarked on {dataset!r}")
    if threat_model not in ("Linf", "L2"):
        raise RddError(f"threat model must be Linf or L2, got {threat_model!r}")
    if n_examples <= 0:
        raise RddError("n_examples must be positive")
    eps_value = rb.default_eps(dataset, threat_model) if eps is None else parse_eps(eps, threat_model)
    registry = get_registry()
    device = prepare_device(cfg.device)
    specs = backbone_specs(cfg)
    if len(specs) != 1:
        raise RddError(f"benchmark trains one model: give one backbone, not {', '.join(b for b, _ in specs)}")
    (backbone, backbone_params), = specs
    ecfg = cfg.evaluate
    robustbench_datasets = ("cifar10", "cifar100")
    if dataset in robustbench_datasets:
        rb.check_robustbench()  # a broken robustbench install fails before the training, not after
    # the whole test split: the protocol's first n_examples points, whatever evaluate.n_test says
    test = load_split(registry, cfg, "test") if dataset not in robustbench_datasets else None
    if test is not None:
        check_set_fits(distilled, test)
    # robustbench loads CIFAR's test split itself: the model's shape then comes from the set's meta.
    make_model = model_factory(registry, backbone, backbone_params, test or _DatasetShape(distilled), device)
    torch.manual_seed(cfg.seed)
    soft = distilled.soft_labels.to(device) if distilled.soft_labels is not None else None
    boxes = distilled.crop_boxes.to(device) if distilled.crop_boxes is not None else None
    model = train_model(make_model(), distilled.images.to(device), distilled.labels.to(device),
                        epochs=ecfg.epochs, lr=ecfg.lr, momentum=ecfg.momentum, weight_decay=ecfg.weight_decay,
                        batch_size=ecfg.batch_size, progress=progress, desc=f"{backbone} train seed {cfg.seed}",
                        soft_labels=soft, temperature=ecfg.kd_temperature, crop_boxes=boxes).eval()
    if dataset in robustbench_datasets:
        result = rb.run_robustbench(model, dataset=dataset, threat_model=threat_model, eps=eps_value,
                                    n_examples=n_examples, data_dir=cfg.data.root or "./data",
                                    device=str(device), batch_size=batch_size, seed=cfg.seed)
    else:
        n = min(n_examples, test.images.shape[0])
        result = rb.run_autoattack_direct(model, test.images[:n].to(device), test.labels[:n].to(device),
                                          threat_model=threat_model, eps=eps_value, batch_size=batch_size,
                                          device=str(device), seed=cfg.seed, dataset=dataset)
    label = name or f"{distilled.meta.get('distiller', 'set')}+{distilled.meta.get('regularizer', 'none')}" \
                    f"-ipc{distilled.meta.get('ipc', '?')}-{backbone}"
    label = re.sub(r"[^A-Za-z0-9_.+-]", "-", label)  # a file name: model_info/<label>.json
    info = rb.model_info(name=label, dataset=dataset, threat_model=threat_model, eps=eps_value,
                         clean_acc=result["clean_acc"], autoattack_acc=result["autoattack_acc"],
                         architecture=backbone,
                         footnote=f"trained {ecfg.epochs} epochs on {distilled.images.shape[0]} distilled images "
                                  f"({distilled.meta.get('distiller', '?')}+{distilled.meta.get('regularizer', '?')})")
    result = {**result, "eps_text": info["eps"], "backbone": backbone, "seed": cfg.seed, "label": label}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.toml", to_toml(cfg.to_dict()))
        info_path = out / "model_info" / f"{label}.json"
        info_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(info_path, info)
        result["model_info_path"] = str(info_path)
        write_json(out / "benchmark.json", {"schema": "rdd-benchmark/1", "result": result, "model_info": info,
                                            "config": cfg.to_dict(), "versions": package_versions()})
    return result


class _DatasetShape:
    """What ``model_factory`` needs from a dataset, read from a set's metadata (CIFAR is not loaded
    here: robustbench loads its own test split)."""

    def __init__(self, distilled: DistilledSet) -> None:
        meta = distilled.dataset
        self.channels = int(distilled.images.shape[1])
        self.image_size = tuple(int(v) for v in distilled.images.shape[2:])
        self.num_classes = len(meta["classes"])
        if "mean" not in meta or "std" not in meta:
            raise RddError("the set's meta.json has no dataset mean/std; the model cannot normalize its inputs")
        self.mean, self.std = tuple(meta["mean"]), tuple(meta["std"])


def quickstart(out: str | Path = "runs/quickstart", overrides: dict | None = None, progress: bool = True) -> dict:
    """``rdd quickstart`` from Python: random, gm, gm+curvature, sre2l, sre2l+curvature; report in ``out``."""
    from .quickstart import run_quickstart

    return run_quickstart(out, overrides, progress=progress)


__all__ = ["distill", "evaluate", "compare", "benchmark", "load_distilled", "get_registry", "quickstart", "RddError", "RunConfig"]
