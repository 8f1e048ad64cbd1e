"""``rdd evaluate``: an evaluation written to a folder (results.json, report.md, plots, config)."""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig, to_toml
from ..distributed.work import fail_together
from ..distributed.world import World, current_world
from ..registry import Registry
from ..run.folder import check_writable
from ..storage import DistilledSet, atomic_write_text
from .pipeline import evaluate_set
from .report import plot_image_grid, write_report


def evaluate_to_folder(distilled: DistilledSet, config: RunConfig, registry: Registry, *,
                       out: str | Path | None = None, label: str = "", progress: bool = True,
                       source: str | Path | None = None, models_dir: str | Path | None = None,
                       world: World | None = None) -> list[dict]:
    """:func:`evaluate_set`, with results.json, report.md, plots and the resolved config in ``out``
    (checked writable before any work) and finished seeds kept under ``out/seeds`` (the trained
    models under ``models_dir``, when given).

    On several ranks every rank computes and returns the results; rank 0 alone checks and writes
    ``out`` (another node need not even see it).
    """
    world = world or current_world()
    if out is not None:
        out = Path(out)
        with fail_together(world):  # a folder rank 0 cannot write stops every rank
            if world.is_main:
                check_writable(out, "evaluation folder")
    results = evaluate_set(distilled, config, registry, label=label, progress=progress,
                           seeds_dir=out / "seeds" if out is not None else None, models_dir=models_dir,
                           world=world)
    if out is not None and world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.toml", to_toml(config.to_dict()))
        grid = out / "distilled_images.png"
        name = results[0]["label"]
        plot_image_grid(distilled.images, distilled.labels, distilled.dataset["classes"], grid, name)
        write_report(out, results, config.to_dict(), title=f"Evaluation of {source or name}", grids={name: grid})
    return results
