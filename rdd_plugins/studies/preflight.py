"""Every job's parts checked against the registry before the first job starts: a typo in the
last job of a grid fails in one line now, not after hours of the jobs before it."""

from __future__ import annotations

from ..errors import RddError
from ..registry import Registry
from .grid import Job
from .jobs import digest


def check_job(job: Job, registry: Registry) -> None:
    """Names and parameters of the dataset, backbones, distiller, regularizer and attack plan."""
    from ..distillation.loop import check_parts
    from ..evaluation.pipeline import attack_plan, backbone_specs

    config = job.config
    check_parts(config, registry)
    attack_plan(registry, config)
    for name, params in backbone_specs(config):
        registry.check_params("backbones", name, **params)


def check_jobs(jobs: list[Job], registry: Registry) -> None:
    checked = set()
    for job in jobs:
        # seeds change no part: one check per config without its seed
        key = digest({k: v for k, v in job.config.to_dict().items() if k != "seed"})
        if key in checked:
            continue
        try:
            check_job(job, registry)
        except RddError as exc:
            raise RddError(f"study job {job.title}: {exc}") from None
        checked.add(key)
