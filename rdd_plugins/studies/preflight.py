"""Every job's parts checked against the registry before the first job starts: a typo in the
last job of a grid fails in one line now, not after hours of the jobs before it."""

from __future__ import annotations

from ..config import RunConfig
from ..errors import RddError
from ..registry import Registry
from .grid import Job
from .jobs import digest


def check_job(job: Job, registry: Registry) -> None:
    """Names and parameters of the dataset, backbones, distiller, regularizer and attack plan, and
    of each further evaluation's backbones and attack plan."""
    from ..distillation.loop import check_parts

    check_parts(job.config, registry)
    check_evaluation(job.config, registry)
    for name, config in job.extra:
        try:
            check_evaluation(config, registry)
        except RddError as exc:
            raise RddError(f"evaluation {name!r}: {exc}") from None


def check_evaluation(config: RunConfig, registry: Registry) -> None:
    from ..evaluation.pipeline import attack_plan, backbone_specs

    attack_plan(registry, config)
    for name, params in backbone_specs(config):
        registry.check_params("backbones", name, **params)


def check_jobs(jobs: list[Job], registry: Registry) -> None:
    checked = set()
    for job in jobs:
        # seeds change no part: one check per config without its seed
        key = digest([{k: v for k, v in c.to_dict().items() if k != "seed"}
                      for c in (job.config, *(config for _, config in job.extra))])
        if key in checked:
            continue
        try:
            check_job(job, registry)
        except RddError as exc:
            raise RddError(f"study job {job.title}: {exc}") from None
        checked.add(key)


def check_data(jobs: list[Job], registry: Registry) -> None:
    """Each dataset of ``jobs`` loaded once, both splits (missing files fail here), and every
    job's IPC checked against its smallest class for a distiller that says how many real images
    it draws (``real_images_per_class``): an IPC too large for the data fails before the first
    job, not after the jobs before it."""
    from ..run.parts import load_split

    by_data: dict[str, list[Job]] = {}
    for job in jobs:
        by_data.setdefault(digest(job.config.to_dict()["data"]), []).append(job)
    for group in by_data.values():
        try:
            train = load_split(registry, group[0].config, "train")
            load_split(registry, group[0].config, "test")  # every job's evaluation reads it
        except RddError as exc:
            raise RddError(f"study dataset {group[0].dataset}: {exc}") from None
        sizes = train.labels.bincount(minlength=train.num_classes)
        smallest = int(sizes.argmin())
        for job in group:
            dcfg = job.config.distill
            distiller = registry.create("distillers", dcfg.distiller, **dcfg.params)
            wants = getattr(distiller, "real_images_per_class", None)
            needed = wants(job.ipc) if callable(wants) else 0
            if needed > sizes[smallest]:
                raise RddError(f"study job {job.title}: {dcfg.distiller} at IPC {job.ipc} draws {needed} real images "
                               f"per class, and class {smallest} of {job.dataset} has {int(sizes[smallest])}: "
                               f"keep grid.ipc at most {int(sizes[smallest])} for it")
