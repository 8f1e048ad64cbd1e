"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig, config_from_dict, merge, resolve, to_toml
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
    base = dict(distilled.meta.get("config") or {"data": {"dataset": distilled.dataset.get("name", "")}})
    if isinstance(config, RunConfig):
        base = merge(base, config.to_dict())
    elif isinstance(config, dict):
        base = merge(base, config)
    elif config is not None:
        return resolve(config_file=config, overrides=overrides, base=base)
    return resolve(base=base, overrides=overrides)


def evaluate(distilled: DistilledSet | str | Path, config: RunConfig | dict | str | Path | None = None, *,
             out: str | Path | None = None, progress: bool = True, overrides: dict | None = None,
             label: str = "") -> dict:
    """Train fresh models on a distilled set; clean and robust accuracy (mean ± std over seeds).

    With ``out``, writes results.json, report.md, the resolved config and plots there.
    """
    source = distilled if isinstance(distilled, (str, Path)) else None
    if source is not None:
        distilled = load_distilled(source)
    cfg = evaluation_config(distilled, config, overrides)
    registry = get_registry()
    result = evaluate_set(distilled, cfg, registry, label=label, progress=progress)
    if result["set"]["ipc"] is None:
        result["set"]["ipc"] = int(distilled.images.shape[0] // len(distilled.dataset["classes"]))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.toml", to_toml(cfg.to_dict()))
        grid = out / "distilled_images.png"
        plot_image_grid(distilled.images, distilled.labels, distilled.dataset["classes"], grid, result["label"])
        write_report(out, [result], cfg.to_dict(), title=f"Evaluation of {source or result['label']}",
                     grids={result["label"]: grid})
    return result


def quickstart(out: str | Path = "runs/quickstart", overrides: dict | None = None, progress: bool = True) -> dict:
    """``rdd quickstart`` from Python: random vs gm vs gm+curvature, report in ``out``."""
    from .quickstart import run_quickstart

    return run_quickstart(out, overrides, progress=progress)


__all__ = ["distill", "evaluate", "load_distilled", "get_registry", "quickstart", "RddError", "RunConfig"]
