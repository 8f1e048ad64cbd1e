"""The Python API; the CLI is a thin layer over these functions, and these over the run layer."""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig
from .errors import RddError
from .plugins import get_registry
from .run.settings import evaluation_config, run_config
from .storage import DistilledSet, load_distilled

ConfigLike = RunConfig | dict | str | Path | None


def distill(config: ConfigLike = None, *, out: str | Path | None = None, progress: bool = True,
            overrides: dict | None = None, resume: bool = False, overwrite: bool = False) -> DistilledSet:
    """Distil a dataset. ``config``: a RunConfig, a nested dict, or a TOML path; ``overrides`` wins.

    ``out`` is the run folder; one that already holds a set is replaced only with ``overwrite=True``.
    ``resume=True`` continues the run in ``out`` from its last checkpoint with the config saved
    there (pass no ``config``); ``overrides`` may change ``device``, and raise
    ``distill.iterations`` to extend the run.

    >>> distill({"data": {"dataset": "synthetic"}, "distill": {"ipc": 1, "iterations": 2}})  # doctest: +SKIP
    """
    from .distillation.loop import run_distillation

    if resume:
        config = _resume_config(out, config, overrides)
        overrides = None
    return run_distillation(run_config(config, overrides), get_registry(), out, progress=progress,
                            resume=resume, overwrite=overwrite)


def _resume_config(out, config, overrides) -> RunConfig:
    if out is None:
        raise RddError("resume needs the run folder (out=...)")
    saved = Path(out) / "config.toml"
    changed = {f"{section}.{key}" if isinstance(value, dict) else section
               for section, value in (overrides or {}).items()
               for key in (value if isinstance(value, dict) else [None])}
    allowed = {"device", "distill.iterations"}
    if config is not None or changed - allowed:
        raise RddError(f"resume continues the run exactly as {saved} says; only the device and "
                       f"(to extend it) distill.iterations may change, not {', '.join(sorted(changed - allowed))}")
    if not saved.is_file():
        raise RddError(f"no run to resume in {out} ({saved.name} is missing)")
    return run_config(saved, overrides)


def evaluate(distilled: DistilledSet | str | Path, config: ConfigLike = None, *, out: str | Path | None = None,
             progress: bool = True, overrides: dict | None = None, label: str = "") -> list[dict]:
    """Train fresh models on a distilled set and attack them; one result per evaluation backbone
    (clean accuracy, per-attack and worst-case robust accuracy, mean ± std over seeds).

    With ``out``, writes results.json, report.md, the resolved config and plots there; finished
    seeds are kept there, so rerunning an interrupted evaluation continues it.
    """
    from .evaluation.evaluate import evaluate_to_folder

    distilled, source = _load(distilled)
    cfg = evaluation_config(distilled, config, overrides)
    return evaluate_to_folder(distilled, cfg, get_registry(), out=out, label=label, progress=progress,
                              source=source)


def compare(runs: list[str | Path], out: str | Path | None = None, title: str = "Comparison") -> list[dict]:
    """Merge the results of several evaluations (folders or results.json files) into one table and
    one plot. Rows keep their labels; a label seen twice gets its run folder's name added."""
    from .evaluation.compare import compare_results

    return compare_results(runs, out=out, title=title)


def benchmark(distilled: DistilledSet | str | Path, config: ConfigLike = None, *, out: str | Path | None = None,
              dataset: str | None = None, threat_model: str = "Linf", eps: str | float | None = None,
              n_examples: int = 10000, batch_size: int = 500, name: str | None = None, progress: bool = True,
              overrides: dict | None = None) -> dict:
    """RobustBench's protocol for a distilled set: train one model on it (the config's seed, DC
    protocol), then AutoAttack (standard) on the first ``n_examples`` test points in order.

    CIFAR-10/100 run through ``robustbench.eval.benchmark`` itself; other datasets (Fashion-MNIST)
    through the same AutoAttack directly. Writes benchmark.json and a RobustBench ModelInfo JSON.
    """
    from .evaluation.benchmark import run_benchmark

    distilled, _ = _load(distilled)
    cfg = evaluation_config(distilled, config, overrides)
    return run_benchmark(distilled, cfg, get_registry(), out=out, dataset=dataset, threat_model=threat_model,
                         eps=eps, n_examples=n_examples, batch_size=batch_size, name=name, progress=progress)


def import_set(src: str | Path, *, format: str, dataset: str, out: str | Path, dataset_params: dict | None = None,
               data_root: str | None = None, clip: bool = False, overwrite: bool = False, **options) -> DistilledSet:
    """Turn a set another tool distilled into one of our set folders, which ``evaluate``,
    ``benchmark`` and ``compare`` then use unchanged.

    ``format`` names a registered set format (``dc``, ``mtt``, ``sre2l``, ``folder``, ``tensors``
    or a plugin's); ``options`` go to it (``index=1``, ``normalized=True``, ``mean=[...]``).
    ``dataset`` (with ``dataset_params``, as ``data.params``) gives the classes, channels, size and
    mean/std the set is checked against. The set is kept as its tool made it, also outside [0, 1],
    unless ``clip=True``. ``out`` holding a set is replaced only with ``overwrite=True``.

    >>> import_set("res_DC_FashionMNIST_ConvNet_10ipc.pt", format="dc", dataset="fashion-mnist",
    ...            out="runs/dc-fmnist")  # doctest: +SKIP
    """
    from .importing.importer import import_set as run_import

    return run_import(get_registry(), src, format=format, dataset=dataset, out=out, dataset_params=dataset_params,
                      data_root=data_root, clip=clip, overwrite=overwrite, **options)


def quickstart(out: str | Path = "runs/quickstart", overrides: dict | None = None, progress: bool = True) -> dict:
    """``rdd quickstart`` from Python: random, gm, gm+curvature, sre2l, sre2l+curvature; report in ``out``."""
    from .quickstart import run_quickstart

    return run_quickstart(out, overrides, progress=progress)


def _load(distilled: DistilledSet | str | Path) -> tuple[DistilledSet, str | Path | None]:
    if isinstance(distilled, (str, Path)):
        return load_distilled(distilled), distilled
    return distilled, None


def study(source: str | Path | dict, *, out: str | Path | None = None, shard: str | tuple[int, int] = (0, 1),
          progress: bool = True) -> dict:
    """Run a study: a grid of distill -> evaluate jobs (datasets x methods x IPC x seeds) from a TOML
    file or a dict of the same shape (docs/study.md), each job in its own folder under ``out``
    (default ``runs/STEM``), then ``leaderboard.md`` / ``leaderboard.json`` and plots there.

    Rerunning skips finished jobs, resumes interrupted distillations and re-evaluates only what a
    changed evaluate section touches. ``shard="I/N"`` runs every N-th job from the I-th (0-based).
    Returns the counts of what the jobs did and the leaderboard.
    """
    from .studies.runner import run_study

    return run_study(source, out, shard=shard, progress=progress)


def study_leaderboard(source: str | Path | dict, *, out: str | Path | None = None) -> dict:
    """Write the leaderboard of the study folder ``out`` again from the results of its finished jobs,
    running none: after the shards of an array, or to check an exported study's leaderboard (its
    folders hold results without sets) against its jobs' JSONs. Returns the leaderboard."""
    from .studies.runner import rewrite_leaderboard

    return rewrite_leaderboard(source, out)


def study_status(source: str | Path | dict, *, out: str | Path | None = None,
                 shard: str | tuple[int, int] = (0, 1)) -> dict:
    """What each job of a study (of one shard of it) still needs, with the checks a run makes and
    nothing written or run: ``{"counts": {state: n}, "rows": [{"job", "state", ...}], ...}``, a
    state being ``finished``, ``evaluate``, ``resume`` or ``distil``."""
    from .studies.runner import study_status as status

    return status(source, out, shard=shard)


__all__ = ["distill", "evaluate", "compare", "benchmark", "import_set", "study", "study_status", "study_leaderboard", "load_distilled", "get_registry", "quickstart",
           "evaluation_config", "RddError", "RunConfig"]
