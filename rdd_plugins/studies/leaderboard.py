"""The study's leaderboard: every finished job's results gathered into one table per dataset, IPC,
evaluation backbone (its name and parameters) and evaluation (the main one, then each of
``[[grid.evaluation]]``), with paired differences, protocol flags, and plots (of the main evaluation).

Only the jobs of the current grid count, each read from its own keyed folder: whichever shard
writes the leaderboard reads every finished job present in the study folder, and folders left by
earlier settings of the study are not mixed in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import fmean

from ..config import parse_eps
from ..storage import atomic_write_text, write_json
from .checks import protocol_flags
from .grid import Job, Study
from .jobs import cpu_threads, evaluation_folder, finished_results, set_folder

SCHEMA = "rdd-study-leaderboard/2"  # 2: "baselines" (a list) and backbones named with their params
# leaderboard.json's decimals; statistics stay unrounded until written, so leaderboard.md's two
# decimals are rounded once, from the exact value (rounding twice moved some cells by 0.01)
JSON_DECIMALS = 4
# "Improvement over random" is the field's reference point (a random real subset of the same size);
# the random method is the one the registry knows under this name.
RANDOM_DISTILLER = "random"


# -- gather -----------------------------------------------------------------------------------------

MAIN = ""  # the evaluation named in [base.evaluate]


def collect(out: Path, jobs: list[Job]) -> list[dict]:
    """One record per finished evaluation of a job and evaluation backbone."""
    records = []
    for job in jobs:
        facts = None
        for evaluation, config in ((MAIN, job.config), *job.extra):
            rows = finished_results(evaluation_folder(out, job, config), config)
            if rows is None:
                continue
            seconds, threads = facts = facts or _set_facts(set_folder(out, job))
            for row in rows:
                records.append({"dataset": job.dataset, "ipc": job.ipc, "method": job.method, "seed": job.seed,
                                "backbone": backbone_label(row["backbone"], row["evaluation"].get("backbone_params")),
                                "evaluation": evaluation, "seconds": seconds, "cpu_threads": threads,
                                "row": row})
    return records


def backbone_label(name: str, params: dict | None) -> str:
    """An evaluation backbone as the tables name it: its name and parameters. Rows of different
    parameters (SRe2L's BatchNorm ConvNet beside DC's instance-norm one) go to different tables, so
    that no difference is taken across architectures."""
    if not params:
        return name
    return f"{name} ({', '.join(f'{k}={_shown(params[k])}' for k in sorted(params))})"


def _shown(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def expected_methods(jobs: list[Job]) -> dict[tuple, set[str]]:
    """Per table (dataset, IPC, backbone label, evaluation), the methods the grid puts in it,
    finished or not: a table's baseline is the grid's choice, not whichever job finished first."""
    from ..evaluation.pipeline import backbone_specs

    expected: dict[tuple, set[str]] = {}
    for job in jobs:
        for evaluation, config in ((MAIN, job.config), *job.extra):
            for name, params in backbone_specs(config):
                key = (job.dataset, job.ipc, backbone_label(name, params), evaluation)
                expected.setdefault(key, set()).add(job.method)
    return expected


def _set_facts(folder: Path) -> tuple[float | None, int | str | None]:
    """The set's distillation seconds, and its CPU thread count (jobs.cpu_threads)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        seconds = float(meta["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    return seconds, cpu_threads(meta)


# -- statistics -------------------------------------------------------------------------------------

def spread(values: list[float]) -> dict:
    """Mean and std (ddof 0, as every report here) over seeds."""
    n = len(values)
    mean = sum(values) / n
    return {"mean": mean, "std": math.sqrt(sum((v - mean) ** 2 for v in values) / n), "n": n}


def paired(differences: list[float]) -> dict:
    """Mean and standard error (ddof 1; None from one seed) of per-seed differences, and how many
    of them are positive."""
    n = len(differences)
    mean = sum(differences) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1) / n) if n > 1 else None
    return {"mean": mean, "se": se, "ahead": sum(d > 0 for d in differences), "n": n}


def column_name(threat: str, eps: str) -> str:
    return f"{threat} {eps}"


def _columns(records: list[dict]) -> list[tuple[str, str]]:
    found = {(t, e) for r in records for t, per in r["row"]["summary"]["worst"].items() for e in per}
    return sorted(found, key=lambda c: (c[0] != "Linf", c[0], parse_eps(c[1], c[0])))


def _metrics(record: dict) -> dict[str, float]:
    """A job's numbers: clean and worst-case robust accuracy (%), mean over its evaluation models,
    from each model's own numbers (the summary's means are rounded to 3 decimals, and the
    leaderboard's statistics would carry that rounding into its 4)."""
    row = record["row"]
    models = row.get("per_seed") or []
    if models and all("worst" in m for m in models):
        values = {"clean": fmean(100 * m["clean"] for m in models)}
        values.update({column_name(t, e): fmean(100 * m["worst"][t][e] for m in models)
                       for t, per in models[0]["worst"].items() for e in per})
        return values
    summary = row["summary"]  # a row without per-model numbers (an imported result's)
    values = {"clean": summary["clean"]["mean"]}
    values.update({column_name(t, e): s["mean"] for t, per in summary["worst"].items() for e, s in per.items()})
    return values


def _attack_setting(record: dict) -> str:
    ev = record["row"]["evaluation"]
    return json.dumps([ev.get("attacks"), ev.get("n_test")], sort_keys=True)


def _largest_common(records: list[dict], columns: list[tuple[str, str]]) -> list[str] | None:
    """The largest eps of the first threat model that every record has."""
    if not columns:
        return None
    threat = columns[0][0]
    common = [c for c in columns if c[0] == threat and all(
        c[1] in r["row"]["summary"]["worst"].get(threat, {}) for r in records)]
    return list(common[-1]) if common else None


# -- one group: a dataset, an IPC, an evaluation backbone ------------------------------------------

def _method_entry(method: str, records: list[dict], names: list[str]) -> dict:
    metrics = [_metrics(r) for r in records]
    seconds = [r["seconds"] for r in records if r["seconds"] is not None]
    return {"method": method, "seeds": sorted(r["seed"] for r in records),
            "clean": spread([m["clean"] for m in metrics]),
            "worst": {n: spread([m[n] for m in metrics]) for n in names if all(n in m for m in metrics)},
            "distill_seconds": spread(seconds) if seconds else None,
            "flagged_jobs": sum(bool(protocol_flags(r["row"])) for r in records)}


def _differences(by_method: dict[str, list[dict]], reference: str, keys: list[str]) -> list[dict]:
    """Per method, the same-seed differences method - reference under the same attacks."""
    reference_by_seed = {r["seed"]: r for r in by_method.get(reference, [])}
    entries = []
    for method, records in by_method.items():
        if method == reference:
            continue
        pairs = [(r, reference_by_seed[r["seed"]]) for r in records if r["seed"] in reference_by_seed
                 and _attack_setting(r) == _attack_setting(reference_by_seed[r["seed"]])]
        if not pairs:
            continue
        values = [(_metrics(a), _metrics(b)) for a, b in pairs]
        diffs = {k: paired([a[k] - b[k] for a, b in values]) for k in keys if all(k in a and k in b for a, b in values)}
        entries.append({"method": method, "seeds": sorted(a["seed"] for a, _ in pairs), "differences": diffs})
    return entries


def group_table(records: list[dict], methods: list[str], baselines: tuple[str, ...], random_method: str,
                expected: set[str] | None = None) -> dict:
    """One table; ``expected``: the methods the grid puts in it, beside those with records."""
    first = records[0]
    columns = _columns(records)
    names = [column_name(t, e) for t, e in columns]
    by_method = {m: [r for r in records if r["method"] == m] for m in methods}
    by_method = {m: rs for m, rs in by_method.items() if rs}
    expected = set(by_method) | (expected or set())
    baseline = next((b for b in baselines if b in expected), "")
    random_method = random_method if random_method in expected else ""
    return {
        "dataset": first["dataset"], "ipc": first["ipc"], "backbone": first["backbone"],
        "evaluation": first.get("evaluation", MAIN),
        "columns": [list(c) for c in columns],
        "largest_common_eps": _largest_common(records, columns),
        "methods": [_method_entry(m, rs, names) for m, rs in by_method.items()],
        "paired": {"baseline": baseline,
                   "methods": _differences(by_method, baseline, ["clean", *names])} if baseline else None,
        "over_random": {"random": random_method,
                        "methods": _differences(by_method, random_method, names)} if random_method else None,
    }


# -- the whole leaderboard --------------------------------------------------------------------------

def random_method_of(study: Study, jobs: list[Job]) -> str:
    return next((j.method for j in jobs if j.config.distill.distiller == RANDOM_DISTILLER), "")


def leaderboard(study: Study, jobs: list[Job], records: list[dict]) -> dict:
    methods = [m.name for m in study.methods]
    random_method = random_method_of(study, jobs)
    evaluations = [MAIN, *(e.name for e in study.evaluations)]

    def group_key(r: dict) -> tuple:
        return r["dataset"], r["ipc"], r["backbone"], r.get("evaluation", MAIN)

    keys = list(dict.fromkeys(group_key(r) for r in records))
    keys.sort(key=lambda k: (evaluations.index(k[3]), [d.name for d in study.datasets].index(k[0]),
                             study.ipcs.index(k[1])))
    expected = expected_methods(jobs)
    groups = [group_table([r for r in records if group_key(r) == key], methods, study.baselines, random_method,
                          expected.get(key, set()))
              for key in keys]
    flags = [{"dataset": r["dataset"], "ipc": r["ipc"], "method": r["method"], "seed": r["seed"],
              "backbone": r["backbone"], "evaluation": r.get("evaluation", MAIN), "flags": protocol_flags(r["row"])}
             for r in records]
    main = [r for r in records if r.get("evaluation", MAIN) == MAIN]
    threads: dict[str, int] = {}  # finished CPU sets per thread count, one per job
    for count in {(r["dataset"], r["ipc"], r["method"], r["seed"]): r.get("cpu_threads") for r in main}.values():
        if count is not None:
            threads[str(count)] = threads.get(str(count), 0) + 1
    return {
        "schema": SCHEMA, "study": study.name, "methods": methods,
        "jobs": {"total": len(jobs), "finished": len({(r["dataset"], r["ipc"], r["method"], r["seed"])
                                                      for r in main})},
        "baselines": list(study.baselines), "random_method": random_method,
        "cpu_threads": dict(sorted(threads.items(), key=_counts_first)),
        "groups": groups,
        "flags": [f for f in flags if f["flags"]],
    }


def _counts_first(item: tuple[str, int]) -> tuple:
    """Thread counts in numeric order, then "unrecorded"."""
    return (0, int(item[0]), "") if item[0].isdigit() else (1, 0, item[0])


def write_leaderboard(out: str | Path, study: Study, jobs: list[Job]) -> dict:
    """leaderboard.json, leaderboard.md and the plots in ``out``, from every finished job of ``jobs``."""
    from .markdown import leaderboard_markdown
    from .plots import write_plots

    out = Path(out)
    board = leaderboard(study, jobs, collect(out, jobs))
    plots = write_plots(out, board)
    atomic_write_text(out / "leaderboard.md", leaderboard_markdown(board, plots))
    board = rounded(board)
    write_json(out / "leaderboard.json", {**board, "plots": plots})
    return board


def rounded(data):
    """``data`` with every float rounded to JSON_DECIMALS."""
    if isinstance(data, float):
        return round(data, JSON_DECIMALS) + 0.0  # no -0.0 from a float sum that is zero but for its last bits
    if isinstance(data, dict):
        return {k: rounded(v) for k, v in data.items()}
    if isinstance(data, list):
        return [rounded(v) for v in data]
    return data
