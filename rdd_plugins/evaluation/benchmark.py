"""``rdd benchmark``: RobustBench's leaderboard protocol for a distilled set."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

from ..config import RunConfig, parse_eps, to_toml
from ..distributed.work import fail_together
from ..distributed.world import World, current_world
from ..errors import RddError
from ..registry import Registry
from ..run.folder import check_writable
from ..run.parts import DatasetShape, load_split, model_factory, set_label, train_on_set, unfinished
from ..runtime import prepare_runtime, scoped_numerics
from ..storage import DistilledSet, atomic_write_text, write_json
from ..versions import package_versions
from .pipeline import backbone_specs, check_set_fits, share_model

# robustbench loads these test splits itself and runs its own benchmark(); others go to AutoAttack directly
ROBUSTBENCH_DATASETS = ("cifar10", "cifar100")


@scoped_numerics
def run_benchmark(distilled: DistilledSet, config: RunConfig, registry: Registry, *, out: str | Path | None = None,
                  dataset: str | None = None, threat_model: str = "Linf", eps: str | float | None = None,
                  n_examples: int = 10000, batch_size: int = 500, name: str | None = None,
                  progress: bool = True, world: World | None = None) -> dict:
    """One model trained on the set (the config's seed, DC's protocol), then AutoAttack standard on
    the first ``n_examples`` test points in order; benchmark.json and a ModelInfo JSON in ``out``.

    On several ranks (``world``, torchrun's by default) rank 0 trains the model and sends it to the
    others; AutoAttack's batches of ``batch_size`` points are dealt round-robin, each seeded by its
    index, so every rank returns the accuracies one process measures (robustbench_protocol.py says
    how, on the robustbench path too). Rank 0 alone prints, shows bars and writes ``out``.
    """
    from rdd_integrations import robustbench_protocol as rb

    world = world or current_world()
    # -- set up: every input checked before the training ----------------------------------------
    with fail_together(world):  # a bad input on one rank stops every rank, not only that one
        dataset = dataset or config.data.dataset
        if dataset != config.data.dataset:
            raise RddError(f"the set was distilled from {config.data.dataset!r}; "
                           f"it cannot be benchmarked on {dataset!r}")
        if threat_model not in ("Linf", "L2"):
            raise RddError(f"threat model must be Linf or L2, got {threat_model!r}")
        if n_examples <= 0:
            raise RddError("n_examples must be positive")
        eps_value = rb.default_eps(dataset, threat_model) if eps is None else parse_eps(eps, threat_model)
        if out is not None:
            out = Path(out)
            if world.is_main:
                check_writable(out, "benchmark folder")
        device = prepare_runtime(config, "evaluation").device
        specs = backbone_specs(config)
        if len(specs) != 1:
            raise RddError(f"benchmark trains one model: give one backbone, not {', '.join(b for b, _ in specs)}")
        (backbone, backbone_params), = specs
        if dataset in ROBUSTBENCH_DATASETS:
            rb.check_robustbench()  # a broken robustbench install fails before the training, not after
        # the whole test split: the protocol's first n_examples points, whatever evaluate.n_test says
        test = load_split(registry, config, "test") if dataset not in ROBUSTBENCH_DATASETS else None
        if test is not None:
            check_set_fits(distilled, test)
        make_model = model_factory(registry, backbone, backbone_params, test or DatasetShape(distilled), device)
        model = make_model()  # the backbone builds on every rank: the others receive rank 0's weights into it
    note = unfinished(distilled)
    if note and world.is_main:
        print(f"rdd: warning: the set is unfinished ({note})", file=sys.stderr)

    # -- train one model (rank 0), then attack it with the protocol's AutoAttack (all ranks) --------
    with fail_together(world):
        if world.is_main:
            torch.manual_seed(config.seed)
            model = train_on_set(make_model, distilled, config, device, progress=progress,
                                 desc=f"{backbone} train seed {config.seed}")
    model.eval()
    share_model(model, 0, world)
    if dataset in ROBUSTBENCH_DATASETS:
        result = rb.run_robustbench(model, dataset=dataset, threat_model=threat_model, eps=eps_value,
                                    n_examples=n_examples, data_dir=config.data.root or "./data",
                                    device=str(device), batch_size=batch_size, seed=config.seed,
                                    progress=progress, world=world)
    else:
        n = min(n_examples, test.images.shape[0])
        result = rb.run_autoattack_direct(model, test.images[:n].to(device), test.labels[:n].to(device),
                                          threat_model=threat_model, eps=eps_value, batch_size=batch_size,
                                          device=str(device), seed=config.seed, dataset=dataset,
                                          progress=progress, world=world)

    # -- package: the leaderboard's ModelInfo, and our record of the run ---------------------------
    label = name or f"{set_label(distilled)}-ipc{distilled.meta.get('ipc', '?')}-{backbone}"
    label = re.sub(r"[^A-Za-z0-9_.+-]", "-", label)  # a file name: model_info/<label>.json
    info = rb.model_info(name=label, dataset=dataset, threat_model=threat_model, eps=eps_value,
                         clean_acc=result["clean_acc"], autoattack_acc=result["autoattack_acc"],
                         architecture=backbone,
                         footnote=f"trained {config.evaluate.epochs} epochs on {distilled.images.shape[0]} "
                                  f"distilled images ({set_label(distilled)})")
    result = {**result, "eps_text": info["eps"], "backbone": backbone, "seed": config.seed, "label": label,
              "unfinished": note}
    if out is not None:
        info_path = benchmark_files(out, label)[1]
        if world.is_main:
            save_benchmark(out, config, label, info, result)
        result["model_info_path"] = str(info_path)  # every rank returns the same result
    return result


def benchmark_files(out: Path, label: str) -> tuple[Path, Path]:
    """Where :func:`save_benchmark` writes: benchmark.json and the ModelInfo JSON."""
    return out / "benchmark.json", out / "model_info" / f"{label}.json"


def save_benchmark(out: Path, config: RunConfig, label: str, info: dict, result: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.toml", to_toml(config.to_dict()))
    bench_path, info_path = benchmark_files(out, label)
    write_json(info_path, info)
    write_json(bench_path, {"schema": "rdd-benchmark/1", "result": {**result, "model_info_path": str(info_path)},
                            "model_info": info, "config": config.to_dict(), "versions": package_versions()})
    return info_path
