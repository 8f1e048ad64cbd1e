"""Where a job lives: folders keyed by its resolved config, and which jobs a shard takes.

A job's set folder is keyed by everything in its config but the ``evaluate`` section, and its
evaluation folder (inside the set folder's ``evaluation/``, where run folders keep what is derived
from their set) by the ``evaluate`` section alone: a changed evaluation setting re-evaluates the
sets it already has, and any other change distils afresh, but for settings no set depends on
(``_without_settings_no_set_depends_on``). This is the seed cache's keying
(evaluation/seed_cache.py) one level up.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ..config import DistillConfig, RunConfig
from ..config.schema import without_keys_added_later
from ..errors import RddError
from ..run.folder import CHECKPOINT_FILE, CONFIG_FILE, IMAGES_FILE, META_FILE
from .grid import Job

KEY_CHARS = 12  # of the SHA-256 in a folder name: collisions need ~16M configs in one study
JOBS_FOLDER = "jobs"
EVALUATIONS_FOLDER = "evaluation"


def digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def set_part(config: RunConfig | dict) -> dict:
    """What the distilled set depends on: the resolved config (or its to_dict) less its evaluate
    section, with the settings no set depends on at their defaults."""
    data = _as_written_today(config)
    return _without_settings_no_set_depends_on({k: v for k, v in data.items() if k != "evaluate"})


def comparable(config: RunConfig | dict) -> dict:
    """A whole config as a finished evaluation's is compared: its set part and its evaluate section."""
    data = _as_written_today(config)
    return {**set_part(data), "evaluate": data.get("evaluate")}


def _as_written_today(config: RunConfig | dict) -> dict:
    """A config, or a saved one's dict, as to_dict writes it today (keys added later at their old value left out)."""
    return config.to_dict() if isinstance(config, RunConfig) else without_keys_added_later(config)


def _without_settings_no_set_depends_on(data: dict) -> dict:
    """``data`` with the settings a finished set does not depend on at their defaults: how often
    checkpoints are written (a resume is exact) and a one-shot selector's iteration budget (random,
    herding: ``iterations_needed = False``); changing them re-uses finished sets. At their defaults
    rather than left out, so that folders keyed before they were recognised keep their names.
    (``data.root`` stays keyed: a resume reads the data from the root its folder's config names.)"""
    distill = data.get("distill")
    if not isinstance(distill, dict):
        return data
    defaults = DistillConfig()
    distill = {**distill, "checkpoint_every": defaults.checkpoint_every} if "checkpoint_every" in distill else distill
    if "iterations" in distill and not _iterates(distill.get("distiller")):
        distill = {**distill, "iterations": defaults.iterations}
    return {**data, "distill": distill}


def _iterates(distiller) -> bool:
    """Whether the registered distiller runs iterations, as its factory (a class) says: the
    ``iterations_needed`` the loop reads from its instances. True when unknown: keep the budget keyed."""
    from ..plugins import get_registry

    try:
        factory = get_registry().get("distillers", str(distiller)).factory
    except RddError:
        return True
    return bool(getattr(factory, "iterations_needed", True))


def set_key(config: RunConfig) -> str:
    return digest(set_part(config))


def evaluation_key(config: RunConfig) -> str:
    return digest(config.to_dict()["evaluate"])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def set_folder(out: str | Path, job: Job) -> Path:
    """``OUT/jobs/DATASET-ipcK-METHOD-seedS-KEY``: readable, and unique by the key."""
    return _keyed_folder(out, job, set_key(job.config))


def _keyed_folder(out: str | Path, job: Job, key: str) -> Path:
    name = f"{_slug(job.dataset)}-ipc{job.ipc}-{_slug(job.method)}-seed{job.seed}-{key[:KEY_CHARS]}"
    return Path(out) / JOBS_FOLDER / name


def earlier_set_folder(out: str | Path, job: Job) -> Path:
    """The name an rdd from before the settings no set depends on were recognised gave the job's
    folder: its key held them as the study set them."""
    return _keyed_folder(out, job, digest({k: v for k, v in job.config.to_dict().items() if k != "evaluate"}))


def adopt_earlier_folder(out: str | Path, job: Job) -> None:
    """Rename the job's folder from its earlier name (``earlier_set_folder``) where that differs
    from today's; a study folder of then would otherwise distil and evaluate those jobs again."""
    today, earlier = set_folder(out, job), earlier_set_folder(out, job)
    if earlier == today or today.exists() or not earlier.is_dir():
        return
    try:
        earlier.rename(today)
    except FileNotFoundError:
        pass  # another shard, adopting the same folder, was first


def evaluation_folder(out: str | Path, job: Job, config: RunConfig | None = None) -> Path:
    """Where the job's set is evaluated with ``config`` (default: the job's own; a further
    evaluation's config differs in its evaluate section only)."""
    return evaluation_in(set_folder(out, job), config or job.config)


def evaluation_in(folder: Path, config: RunConfig) -> Path:
    """The evaluation folder for ``config`` inside the set folder ``folder``."""
    return folder / EVALUATIONS_FOLDER / evaluation_key(config)[:KEY_CHARS]


def models_folder(folder: Path) -> Path:
    """Where a job's evaluations keep its trained models: beside them, so that they count as what
    rdd derived from the set (run/folder.py) and go when the set is distilled again."""
    return folder / EVALUATIONS_FOLDER / "models"


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise RddError(f"shard {text!r} must look like I/N, e.g. 0/4 (0-based I)")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise RddError(f"shard {text!r}: need 0 <= I < N")
    return index, count


def shard_jobs(jobs: list[Job], index: int, count: int) -> list[Job]:
    """Every ``count``-th job from ``index``: shards of one grid share no job and miss none."""
    return jobs[index::count]


# -- what a job's folders hold ---------------------------------------------------------------------

def _saved_config(path: Path) -> dict | None:
    """The resolved config a folder's config.toml holds, or None when it is missing or unreadable."""
    from ..config import resolve

    try:
        return resolve(config_file=path).to_dict() if path.is_file() else None
    except RddError:
        return None


def finished_set_meta(folder: Path, config: RunConfig) -> dict | None:
    """meta.json of a finished set made with ``config`` (its evaluate section aside), else None."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("interrupted") or not (folder / IMAGES_FILE).is_file():
        return None
    # read as to_dict writes today, settings no set depends on aside
    made_with = set_part(meta.get("config") or {})
    return meta if json.dumps(made_with, sort_keys=True) == json.dumps(set_part(config), sort_keys=True) else None


UNRECORDED = "unrecorded"  # a CPU set whose legs ran with different thread counts, or one from before they were kept


def cpu_threads(meta: dict) -> int | str | None:
    """The intra-op thread count a set's CPU run had (None off the CPU): on a CPU, float reductions
    split across threads round differently, so a set is bit for bit its config's only at its count."""
    return (meta.get("cpu_threads") or UNRECORDED) if meta.get("device") == "cpu" else None


def finished_cpu_threads(out: str | Path, jobs: list[Job]) -> set:
    """The thread counts the finished CPU sets of ``jobs`` in ``out`` were made with."""
    metas = (finished_set_meta(present_set_folder(out, job), job.config) for job in jobs)
    return {cpu_threads(meta) for meta in metas if meta is not None} - {None}


def results_without_set(folder: Path) -> bool:
    """A finished run's meta.json with no set beside it: results copied without their set
    (studies/export.py's export) or a set deleted by hand. A set is written before its meta.json,
    so no interrupted or failed run leaves this; a run would distil over those results."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and not meta.get("interrupted") and not (folder / IMAGES_FILE).exists()


def present_set_folder(out: str | Path, job: Job) -> Path:
    """The job's folder as it is on disk now: an earlier key's folder until the runner adopts it."""
    folder = set_folder(out, job)
    return earlier_set_folder(out, job) if not folder.exists() and earlier_set_folder(out, job).is_dir() else folder


def resumable(folder: Path, config: RunConfig) -> bool:
    """A checkpoint there, of a run whose config.toml is this job's (its evaluate section aside)."""
    saved = _saved_config(folder / CONFIG_FILE)
    return (folder / CHECKPOINT_FILE).is_file() and saved is not None and set_part(saved) == set_part(config)


def finished_results(folder: Path, config: RunConfig) -> list[dict] | None:
    """The rows of an evaluation written for exactly ``config``, else None."""
    from ..evaluation.report import load_results

    saved = _saved_config(folder / CONFIG_FILE)
    if not (folder / "results.json").is_file() or saved is None or comparable(saved) != comparable(config):
        return None
    try:
        return load_results(folder / "results.json")
    except RddError:
        return None


def job_status(out: str | Path, job: Job) -> dict:
    """What the job still needs, read from its folders without writing: ``finished``, ``results-only``
    (results without their set: a run stops before it), ``evaluate``
    (its set is finished; ``missing`` of its evaluations are not), ``resume`` (a checkpoint at
    ``iteration`` of ``iterations``) or ``distil``; with the ``seconds`` its finished parts took
    (``distil``, and each of ``evaluations`` or None) once its set is finished."""
    from ..checkpoint import checkpoint_record

    folder = present_set_folder(out, job)
    if results_without_set(folder):
        return {"state": "results-only"}
    evaluations = [job.config, *(config for _, config in job.extra)]
    meta = finished_set_meta(folder, job.config)
    if meta is not None:
        results = [finished_results(evaluation_in(folder, c), c) for c in evaluations]
        seconds = {"distil": meta.get("seconds"),
                   "evaluations": [None if rows is None else evaluation_seconds(rows) for rows in results]}
        missing = sum(rows is None for rows in results)
        if missing:
            return {"state": "evaluate", "missing": missing, "of": len(evaluations), "seconds": seconds}
        return {"state": "finished", "seconds": seconds}
    if resumable(folder, job.config):
        record = checkpoint_record(folder) or {}
        return {"state": "resume", "iteration": record.get("iteration"), "iterations": job.config.distill.iterations}
    return {"state": "distil"}


def evaluation_seconds(rows: list[dict]) -> float:
    """Seconds an evaluation took: training its models, the clean pass and the attacks."""
    return sum((seed.get("train_seconds") or 0.0) + (seed.get("clean_seconds") or 0.0)
               + (seed.get("attack_seconds") or 0.0) for row in rows for seed in row.get("per_seed", []))
