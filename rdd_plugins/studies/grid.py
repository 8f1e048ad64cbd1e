"""A study file read and expanded: ``[base]`` (a run config) and ``[grid]`` (datasets, IPCs,
seeds, methods, further evaluations) become one resolved RunConfig per job, in a fixed order.

Every key is checked here, before any job runs: an unknown or mistyped key is a one-line error
naming where it is.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ATTACK_PLAN_KEYS, EvaluateConfig, RunConfig, config_from_dict, load_toml
from ..errors import RddError

STUDY_KEYS = ("name", "base", "grid")
GRID_KEYS = ("dataset", "ipc", "seed", "method", "baseline", "evaluation")
METHOD_KEYS = ("name", "distiller", "regularizer", "params", "regularizer_params", "backbone_params", "iterations")
DATASET_KEYS = ("name", "params")
EVALUATION_KEYS = ("name", "ipc")  # and any key of an evaluate section


@dataclass(frozen=True)
class Method:
    """One row of the leaderboard: a distiller with its regularizer and their parameters. A
    parameter table left out (None) falls back to the base's when the part is the base's."""

    name: str
    distiller: str | None = None
    regularizer: str | None = None
    params: dict | None = None
    regularizer_params: dict | None = None
    backbone_params: dict = field(default_factory=dict)
    iterations: int | None = None  # the base's when None (sre2l's recover steps differ from gm's iterations)


@dataclass(frozen=True)
class Evaluation:
    """A further evaluation of some of the grid's sets (AutoAttack on the IPC-10 sets, say): the
    base's evaluate section with ``settings`` in its place, on the sets the grid already makes, with
    its own tables in the leaderboard. Settings naming any attack-plan key replace the base's whole
    plan (a base's PGD parameters mean nothing to AutoAttack)."""

    name: str
    ipcs: tuple[int, ...] | None  # None: the sets of every IPC
    settings: dict


@dataclass(frozen=True)
class Dataset:
    name: str
    params: dict | None = None


@dataclass
class Study:
    name: str
    base: RunConfig
    datasets: list[Dataset]
    ipcs: list[int]
    seeds: list[int]
    methods: list[Method]
    # paired against: per leaderboard table, the first of these that the table has (a study whose
    # methods run on different backbones names one baseline per backbone, e.g. random and sre2l)
    baselines: tuple[str, ...] = ()
    source: dict = field(default_factory=dict)  # the study as written, kept beside its results
    evaluations: list[Evaluation] = field(default_factory=list)


@dataclass
class Job:
    """One distill -> evaluate unit of the grid."""

    dataset: str
    ipc: int
    method: str
    seed: int
    config: RunConfig
    # (name, config) of each further evaluation of this job's set: its config differs in evaluate only
    extra: tuple[tuple[str, RunConfig], ...] = ()

    @property
    def title(self) -> str:
        return f"{self.dataset} ipc {self.ipc} {self.method} seed {self.seed}"


def load_study(source: str | Path | dict, name: str = "") -> Study:
    """A study from a TOML file or a dict of the same shape; every key checked."""
    data = copy.deepcopy(source) if isinstance(source, dict) else load_toml(source)
    _only_known(data, STUDY_KEYS, "study")
    # the leaderboard's heading: the file's own `name`, so that the copy a run keeps in its folder
    # (study.toml) names the study as the file it was run from did
    written = data.get("name", "")
    if not isinstance(written, str):
        raise RddError(f"study key name must be a string (at the top of the file), not {written!r}")
    name = name or written or ("study" if isinstance(source, dict) else Path(source).stem)
    base = _table(data.get("base", {}), "base")
    grid = _table(data.get("grid", {}), "grid")
    _only_known(grid, GRID_KEYS, "grid")
    try:
        base_config = config_from_dict(base)
    except RddError as exc:
        raise RddError(f"study [base]: {exc}") from None
    study = Study(
        name=name,
        base=base_config,
        datasets=_datasets(grid.get("dataset", [base_config.data.dataset])),
        ipcs=_integers(grid.get("ipc", [base_config.distill.ipc]), "grid.ipc", minimum=1),
        seeds=_integers(grid.get("seed", [base_config.seed]), "grid.seed", minimum=0),
        methods=_methods(grid.get("method"), base_config),
        baselines=_baselines(grid.get("baseline", "")),
        source=data,
    )
    study.evaluations = _evaluations(grid.get("evaluation"), study.ipcs)
    names = [m.name for m in study.methods]
    for baseline in study.baselines:
        if baseline not in names:
            raise RddError(f"grid.baseline {baseline!r} names no method; methods: {', '.join(names)}")
    return study


def _baselines(value) -> tuple[str, ...]:
    """grid.baseline: a method's name, or a list of them ("" or [] for none)."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RddError(f"grid.baseline must be a method's name or a list of them, not {value!r}")
    if len(set(names)) != len(names):
        raise RddError(f"grid.baseline lists a method twice: {value!r}")
    return tuple(n for n in names if n)


def expand(study: Study) -> list[Job]:
    """Every job, in the order shards count them: dataset, then IPC, then method, then seed, each
    in the order the file lists them. A job carries the further evaluations of its set, so that one
    shard owns each set folder."""
    jobs = []
    for d in study.datasets:
        for ipc in study.ipcs:
            for m in study.methods:
                for seed in study.seeds:
                    config = job_config(study, d, ipc, m, seed)
                    extra = tuple((e.name, evaluation_config(config, e)) for e in study.evaluations
                                  if e.ipcs is None or ipc in e.ipcs)
                    _no_repeated_evaluation(config, extra)
                    jobs.append(Job(d.name, ipc, m.name, seed, config, extra))
    return jobs


def _no_repeated_evaluation(config: RunConfig, extra: tuple[tuple[str, RunConfig], ...]) -> None:
    """A further evaluation whose settings come to the main one's (or an earlier one's) would write
    into the same folder and show the same table twice."""
    seen = {json.dumps(config.to_dict()["evaluate"], sort_keys=True): "the main evaluation"}
    for name, other in extra:
        key = json.dumps(other.to_dict()["evaluate"], sort_keys=True)
        if key in seen:
            raise RddError(f"grid.evaluation {name!r} evaluates as {seen[key]} does: it changes no setting")
        seen[key] = repr(name)


def job_config(study: Study, dataset: Dataset, ipc: int, method: Method, seed: int) -> RunConfig:
    """The base with the job's dataset, IPC, method and seed; validated."""
    base = study.base
    cfg = base.to_dict()
    cfg["seed"] = seed
    cfg["data"]["dataset"] = dataset.name
    cfg["data"]["params"] = _own_params(dataset.params, dataset.name, base.data.dataset, base.data.params)
    distiller = method.distiller or base.distill.distiller
    regularizer = method.regularizer or base.distill.regularizer
    cfg["distill"].update(
        ipc=ipc, distiller=distiller, regularizer=regularizer,
        params=_own_params(method.params, distiller, base.distill.distiller, base.distill.params),
        regularizer_params=_own_params(method.regularizer_params, regularizer, base.distill.regularizer,
                                       base.distill.regularizer_params))
    if method.iterations is not None:
        cfg["distill"]["iterations"] = method.iterations
    # One backbone for all methods: a method's keys add to the base's (sre2l: norm = "batch").
    cfg["backbone"]["params"] = {**base.backbone.params, **method.backbone_params}
    try:
        return config_from_dict(cfg)
    except RddError as exc:
        raise RddError(f"study job {dataset.name} ipc {ipc} {method.name} seed {seed}: {exc}") from None


def evaluation_config(config: RunConfig, evaluation: Evaluation) -> RunConfig:
    """``config`` with ``evaluation``'s settings in its evaluate section; validated."""
    cfg = config.to_dict()
    evaluate = cfg["evaluate"]
    if any(key in ATTACK_PLAN_KEYS for key in evaluation.settings):
        defaults = EvaluateConfig()
        evaluate.update({key: copy.deepcopy(getattr(defaults, key)) for key in ATTACK_PLAN_KEYS})
    evaluate.update(copy.deepcopy(evaluation.settings))
    try:
        return config_from_dict(cfg)
    except RddError as exc:
        raise RddError(f"study grid.evaluation {evaluation.name!r}: {exc}") from None


def _own_params(given: dict | None, part: str, base_part: str, base_params: dict) -> dict:
    # Parameters belong to one part: the base's would be rejected by another distiller or dataset.
    if given is not None:
        return copy.deepcopy(given)
    return copy.deepcopy(base_params) if part == base_part else {}


def _only_known(table: dict, known: tuple[str, ...], where: str) -> None:
    unknown = [k for k in table if k not in known]
    if unknown:
        raise RddError(f"unknown key {where}.{unknown[0]} in the study; known: {', '.join(known)}")


def _table(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise RddError(f"study key {where} must be a table")
    return value


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]  # a single value is a list of one


def _no_repeats(values: list, where: str) -> None:
    if len(set(values)) != len(values):
        raise RddError(f"{where} lists a value twice: {', '.join(map(str, values))}")


def _integers(value, where: str, *, minimum: int) -> list[int]:
    values = _as_list(value)
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise RddError(f"{where} must hold integers >= {minimum}, got {v!r}")
    if not values:
        raise RddError(f"{where} is empty")
    _no_repeats(values, where)
    return values


def _datasets(value) -> list[Dataset]:
    datasets = []
    for i, entry in enumerate(_as_list(value)):
        where = f"grid.dataset[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        _only_known(_table(entry, where), DATASET_KEYS, where)
        name, params = entry.get("name"), entry.get("params")
        if not isinstance(name, str) or not name:
            raise RddError(f"{where} needs a name (a registered dataset)")
        if params is not None:
            _table(params, f"{where}.params")
        datasets.append(Dataset(name, params))
    if not datasets:
        raise RddError("grid.dataset is empty")
    _no_repeats([d.name for d in datasets], "grid.dataset")
    return datasets


def _evaluations(value, ipcs: list[int]) -> list[Evaluation]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RddError("grid.evaluation must be a list of tables ([[grid.evaluation]] entries)")
    evaluations = []
    for i, entry in enumerate(value):
        where = f"grid.evaluation[{i}]"
        _table(entry, where)
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise RddError(f"{where} needs a name (the title of its tables in the leaderboard)")
        chosen = None
        if "ipc" in entry:
            chosen = tuple(_integers(entry["ipc"], f"{where}.ipc", minimum=1))
            missing = [str(k) for k in chosen if k not in ipcs]
            if missing:
                raise RddError(f"{where}.ipc names IPC {', '.join(missing)}, which grid.ipc does not list")
        settings = {k: v for k, v in entry.items() if k not in EVALUATION_KEYS}
        if not settings:
            raise RddError(f"{where} sets no evaluate key: it would repeat the main evaluation")
        evaluations.append(Evaluation(name, chosen, settings))
    _no_repeats([e.name for e in evaluations], "grid.evaluation names")
    return evaluations


def _methods(value, base: RunConfig) -> list[Method]:
    if value is None:  # no [[grid.method]]: the base's own distiller and regularizer
        dcfg = base.distill
        return [Method(f"{dcfg.distiller}+{dcfg.regularizer}")]
    if not isinstance(value, list) or not value:
        raise RddError("grid.method must be a list of tables ([[grid.method]] entries)")
    methods = []
    for i, entry in enumerate(value):
        where = f"grid.method[{i}]"
        _only_known(_table(entry, where), METHOD_KEYS, where)
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise RddError(f"{where} needs a name (its label in the leaderboard)")
        for key in ("distiller", "regularizer"):
            if key in entry and (not isinstance(entry[key], str) or not entry[key]):
                raise RddError(f"{where}.{key} must be a registered name, got {entry[key]!r}")
        for key in ("params", "regularizer_params", "backbone_params"):
            if key in entry:
                _table(entry[key], f"{where}.{key}")
        iterations = entry.get("iterations")
        if iterations is not None and (isinstance(iterations, bool) or not isinstance(iterations, int)
                                       or iterations < 0):
            raise RddError(f"{where}.iterations must be an integer >= 0, got {iterations!r}")
        methods.append(Method(name, entry.get("distiller"), entry.get("regularizer"), entry.get("params"),
                              entry.get("regularizer_params"), entry.get("backbone_params", {}), iterations))
    _no_repeats([m.name for m in methods], "grid.method names")
    return methods
