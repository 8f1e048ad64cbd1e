"""How long the unfinished jobs of a study still take, at the pace of its finished ones.

A study spread over days or an array job is planned by this: each unfinished job is priced at the
mean seconds its finished peers (the same dataset, IPC and method, other seeds) took for the parts
it still needs, a checkpointed distillation at the fraction of its iterations left. A job with no
finished peer is counted, not guessed: IPC and method change a job's cost by more than any rule
of thumb would get right. The seconds are those of the machine and thread count the peers ran
with.
"""

from __future__ import annotations

from statistics import fmean

from .grid import Job


def _peer_key(job: Job) -> tuple:
    return job.dataset, job.ipc, job.method


def _paces(jobs: list[Job], status_of: dict[str, dict]) -> dict[tuple, dict]:
    """Per peer group: the seconds of its finished distillations and of each finished evaluation."""
    paces: dict[tuple, dict] = {}
    for job in jobs:
        spent = status_of[job.title].get("seconds")
        if not spent:
            continue
        pace = paces.setdefault(_peer_key(job), {"distil": [], "evaluations": {}})
        if spent.get("distil") is not None:
            pace["distil"].append(float(spent["distil"]))
        for index, seconds in enumerate(spent.get("evaluations", [])):
            if seconds is not None:
                pace["evaluations"].setdefault(index, []).append(float(seconds))
    return paces


def seconds_left(jobs: list[Job], status_of: dict[str, dict], mine: list[Job] | None = None) -> dict:
    """``seconds``: what the unfinished jobs among ``mine`` (default: all) still need at their peers'
    pace; ``unpriced``: how many unfinished jobs have no finished peer for a part they need.
    ``status_of`` maps each job's title (unique in a grid) to its jobs.job_status."""
    paces = _paces(jobs, status_of)
    total, unpriced = 0.0, 0
    for job in jobs if mine is None else mine:
        status = status_of[job.title]
        if status["state"] in ("finished", "results-only"):  # the latter a run refuses to touch
            continue
        pace = paces.get(_peer_key(job), {"distil": [], "evaluations": {}})
        if status["state"] == "evaluate":
            needed = [i for i, seconds in enumerate(status["seconds"]["evaluations"]) if seconds is None]
            distil_share = 0.0
        else:
            needed = list(range(1 + len(job.extra)))
            done = (status.get("iteration") or 0) if status["state"] == "resume" else 0
            distil_share = 1.0 - done / status["iterations"] if status.get("iterations") else 1.0
        parts = [pace["evaluations"].get(i) for i in needed] + ([pace["distil"]] if distil_share else [])
        if not all(parts):
            unpriced += 1
            continue
        total += sum(fmean(pace["evaluations"][i]) for i in needed)
        if distil_share:
            total += distil_share * fmean(pace["distil"])
    return {"seconds": total, "unpriced": unpriced}
