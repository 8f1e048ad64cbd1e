"""``rdd study``: the jobs of a study's grid (or of one shard of it), each distilled and evaluated
in its own keyed folder; the leaderboard rewritten after every job that did work.

A job is idempotent: finished (its set, and results.json for this exact config) it is skipped; a
distillation that was interrupted resumes from its checkpoint; a set whose evaluation settings
changed is evaluated again without being distilled again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..config import RunConfig, to_toml
from ..errors import RddError
from ..plugins import get_registry
from ..progress import bar
from ..registry import Registry
from ..run.folder import CONFIG_FILE, check_writable
from ..runtime import resolve_device
from ..storage import DistilledSet, atomic_write_text, load_distilled
from .grid import Job, expand, load_study
from .jobs import (JOBS_FOLDER, adopt_earlier_folder, evaluation_folder, finished_cpu_threads, finished_results,
                   finished_set_meta, job_status, models_folder, parse_shard, results_without_set, resumable,
                   set_folder, shard_jobs)
from .leaderboard import collect, write_leaderboard
from .pace import seconds_left
from .preflight import check_data, check_jobs

STUDY_FILE = "study.toml"  # the study as given, beside its results


# The two calls that do the work, kept apart so that a caller (or a test) can watch them.

def distill_set(config: RunConfig, registry: Registry, folder: Path, *, progress: bool, resume: bool) -> DistilledSet:
    from ..distillation.loop import run_distillation

    # The study owns its job folders: a fresh run replaces whatever stale state a folder holds.
    return run_distillation(config, registry, folder, progress=progress, resume=resume, overwrite=not resume)


def evaluate_job_set(distilled: DistilledSet, config: RunConfig, registry: Registry, folder: Path, *,
                     label: str, progress: bool) -> list[dict]:
    from ..evaluation.evaluate import evaluate_to_folder

    set_dir = folder.parent.parent
    # the set's trained models, shared by its evaluations: other attacks or test points train none again
    return evaluate_to_folder(distilled, config, registry, out=folder, label=label, progress=progress,
                              source=set_dir, models_dir=models_folder(set_dir))


def obtain_set(job: Job, folder: Path, registry: Registry, progress: bool) -> tuple[DistilledSet, str]:
    """The job's set and how it was had: "reused", "resumed" or "distilled"."""
    if finished_set_meta(folder, job.config) is not None:
        try:
            return load_distilled(folder), "reused"
        except RddError:
            pass  # damaged files under a finished meta.json: distil afresh
    if resumable(folder, job.config):
        from ..run.settings import run_config

        # the run's own config.toml: its evaluate section may be an older one, and resume checks it
        saved = run_config(folder / CONFIG_FILE)
        return distill_set(saved, registry, folder, progress=progress, resume=True), "resumed"
    return distill_set(job.config, registry, folder, progress=progress, resume=False), "distilled"


def run_job(job: Job, out: Path, registry: Registry, progress: bool) -> str:
    """An unfinished job (run_study skips the finished ones) done: "re-evaluated" (its set kept, an
    evaluation missing), or "resumed" or "distilled" and then evaluated (its main evaluation, then
    each further one, each only where missing)."""
    set_dir = set_folder(out, job)
    evaluations = [job.config, *(config for _, config in job.extra)]
    missing = [c for c in evaluations if finished_results(evaluation_folder(out, job, c), c) is None]
    distilled, how = obtain_set(job, set_dir, registry, progress)
    # a set made now makes every evaluation of the one it replaced stale
    for config in missing if how == "reused" else evaluations:
        evaluate_job_set(distilled, config, registry, evaluation_folder(out, job, config), label=job.method,
                         progress=progress)
    return "re-evaluated" if how == "reused" else how


def default_out(source) -> Path:
    if isinstance(source, dict):
        raise RddError("a study given as a dict needs an output folder (out=...)")
    return Path("runs") / Path(source).stem


def _checked_jobs(source, shard: str | tuple[int, int]):
    """The study, every job of its grid (each checked against the registry) and the shard."""
    index, count = parse_shard(shard) if isinstance(shard, str) else shard
    if not 0 <= index < count:
        raise RddError(f"shard {index}/{count}: need 0 <= I < N")
    study = load_study(source)
    jobs = expand(study)
    check_jobs(jobs, get_registry())
    return study, jobs, (index, count)


def run_study(source: str | Path | dict, out: str | Path | None = None, *, shard: str | tuple[int, int] = (0, 1),
              progress: bool = True) -> dict:
    """Run this shard's jobs of the study in ``source`` (a TOML path or a dict) into ``out``.

    Everything is checked before the first job: the study's keys, every job's resolved config and
    its parts. Returns the counts of what each job did, the failures, and the leaderboard.
    """
    study, jobs, (index, count) = _checked_jobs(source, shard)
    registry = get_registry()
    out = check_writable(out if out is not None else default_out(source), "study folder")
    mine = shard_jobs(jobs, index, count)
    _refuse_results_without_sets(out, mine)
    finished = {job.title for job in mine if job_status(out, job)["state"] == "finished"}
    work = [job for job in mine if job.title not in finished]
    check_data(work, registry)
    _warn_of_another_thread_count(out, jobs, work)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / STUDY_FILE, to_toml({**study.source, "name": study.name}))
    for job in mine:
        adopt_earlier_folder(out, job)
    done: dict[str, int] = {}
    failed = []
    # finished jobs start the bar rather than count in its rate: a rerun's pace is its work's
    with bar(total=len(mine), initial=len(finished), desc=f"study {study.name}", unit="job",
             enabled=progress) as pbar:
        for job in mine:
            if job.title in finished:
                done["skipped"] = done.get("skipped", 0) + 1
                continue
            pbar.set_postfix_str(job.title)
            try:
                how = run_job(job, out, registry, progress)
            except RddError as exc:  # one job's problem (a NaN, a bad value) need not stop the others
                print(f"rdd: study job {job.title} failed: {exc}", file=sys.stderr)
                failed.append(f"{job.title}: {exc}")
                how = "failed"
            done[how] = done.get(how, 0) + 1
            if how != "failed":
                write_leaderboard(out, study, jobs)
            pbar.update(1)
    board = write_leaderboard(out, study, jobs)
    summary = {"study": study.name, "out": str(out), "shard": [index, count], "jobs": len(jobs),
               "shard_jobs": len(mine), "done": done, "failed": failed, "leaderboard": board}
    if failed:
        others = f" (the others are in {out})" if len(failed) < len(mine) else ""
        raise RddError(f"{len(failed)} of {len(mine)} jobs failed{others}: {failed[0]}")
    return summary


def _refuse_results_without_sets(out: Path, jobs: list[Job]) -> None:
    """Stop before any work when a job's folder holds results but not their set: an exported study
    (committed results) would otherwise be distilled and evaluated over."""
    # every job folder there, this study's or not: a run of another study into an export would
    # replace its leaderboard and study.toml
    folders = sorted((out / JOBS_FOLDER).iterdir()) if (out / JOBS_FOLDER).is_dir() else []
    bare = [p.name for p in folders if p.is_dir() and results_without_set(p)]
    if bare:
        jobs_text = f"{len(bare)} job{'s' if len(bare) > 1 else ''}"
        raise RddError(f"{out} holds results without their sets ({jobs_text}, e.g. {bare[0]}: an "
                       "export, or sets deleted by hand); a run would replace them: give another --out, use "
                       "--leaderboard to rewrite this folder's leaderboard from them, or remove the folders "
                       "of the jobs to distil again")


def _warn_of_another_thread_count(out: Path, jobs: list[Job], work: list[Job]) -> None:
    """Say so when this process would make CPU sets (``work``: its unfinished jobs) with another
    thread count than the study's finished ones have (torchrun gives each process
    OMP_NUM_THREADS=1 where a plain run has a thread per core): the job keys hold no thread count,
    so the leaderboard would mix roundings. Sets whose count is unrecorded say nothing either way."""
    import torch

    if os.environ.get("RANK", "0") != "0":  # one note per launch: torchrun's processes have one count
        return
    if not any(str(resolve_device(job.config.device)) == "cpu" for job in work):
        return
    mine = torch.get_num_threads()
    others = sorted(t for t in finished_cpu_threads(out, jobs) if isinstance(t, int) and t != mine)
    if others:
        print(f"rdd: note: finished CPU sets here were made with {' or '.join(map(str, others))} "
              f"thread{'s' if others != [1] else ''}, this process has {mine}: on a CPU what it makes rounds "
              "differently, and evaluation models kept at another count are trained again (OMP_NUM_THREADS "
              "sets the count; leaderboard.json's cpu_threads counts the sets by thread count)", file=sys.stderr)


def rewrite_leaderboard(source: str | Path | dict, out: str | Path | None = None) -> dict:
    """The leaderboard of ``out`` written again from the finished jobs' results there, no job run:
    after an array's shards, or from an exported study's JSONs (which hold no sets)."""
    study, jobs, _ = _checked_jobs(source, (0, 1))
    out = Path(out if out is not None else default_out(source))
    if not (out / JOBS_FOLDER).is_dir():
        raise RddError(f"{out}: no {JOBS_FOLDER}/ folder, so no job of a study has run there")
    check_writable(out, "study folder")
    if not collect(out, jobs) and any((out / JOBS_FOLDER).iterdir()):
        # another study's folder: its leaderboard must not be replaced by an empty one
        raise RddError(f"no job of {study.name} has finished in {out}, whose {JOBS_FOLDER}/ holds other jobs: "
                       f"is this the study that ran there? ({out / STUDY_FILE} is its file)")
    return write_leaderboard(out, study, jobs)


def study_status(source: str | Path | dict, out: str | Path | None = None, *,
                 shard: str | tuple[int, int] = (0, 1)) -> dict:
    """What each job of this shard still needs (jobs.job_status), with the same checks as a run
    and nothing written: for planning an array job, or seeing how far a long study is."""
    study, jobs, (index, count) = _checked_jobs(source, shard)
    out = Path(out if out is not None else default_out(source))
    mine = shard_jobs(jobs, index, count)
    status_of = {job.title: job_status(out, job) for job in jobs}  # every shard's finished jobs set the pace
    rows = [{"job": job.title, **status_of[job.title]} for job in mine]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return {"study": study.name, "out": str(out), "shard": [index, count], "jobs": len(jobs),
            "shard_jobs": len(mine), "counts": counts, "rows": rows,
            "left": seconds_left(jobs, status_of, mine)}
