"""`rdd study`: grid expansion and keys, idempotent jobs, shards, the leaderboard, protocol checks."""

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

import rdd_plugins
from rdd_plugins import api, plugins
from rdd_plugins.cli import _duration, main
from rdd_plugins.config import load_toml, parse_eps
from rdd_plugins.errors import RddError
from rdd_plugins.run.folder import CHECKPOINT_FILE, IMAGES_FILE
from rdd_plugins.storage import load_distilled
from rdd_plugins.studies import checks, runner
from rdd_plugins.studies.grid import expand, load_study
from rdd_plugins.studies.jobs import (digest, evaluation_folder, evaluation_key, evaluation_seconds, parse_shard,
                                    set_folder, set_key, set_part, shard_jobs)
from rdd_plugins.studies.leaderboard import paired, rounded, spread
from rdd_plugins.studies.pace import seconds_left
from rdd_plugins.studies.markdown import spread_cell

SMOKE = Path(__file__).resolve().parents[1] / "examples" / "study-smoke.toml"


def smoke_study() -> dict:
    return load_toml(SMOKE)


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory):
    """The smoke study run once through the CLI; tests copy the folder before changing it."""
    out = tmp_path_factory.mktemp("smoke") / "study"
    assert main(["study", str(SMOKE), "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture
def watched(monkeypatch):
    """The runner's two working calls, recorded (and still done)."""
    calls = {"distill": [], "evaluate": []}
    distill, evaluate = runner.distill_set, runner.evaluate_job_set

    def watch_distill(config, registry, folder, **kw):
        calls["distill"].append((Path(folder).name, kw["resume"]))
        return distill(config, registry, folder, **kw)

    def watch_evaluate(distilled, config, registry, folder, **kw):
        calls["evaluate"].append(Path(folder).parent.parent.name)
        return evaluate(distilled, config, registry, folder, **kw)

    monkeypatch.setattr(runner, "distill_set", watch_distill)
    monkeypatch.setattr(runner, "evaluate_job_set", watch_evaluate)
    return calls


def _numbers(board: dict) -> dict:
    """leaderboard.json less what depends on the clock (distillation seconds, plots drawn from them)."""
    board = copy.deepcopy(board)
    board.pop("plots", None)
    for group in board["groups"]:
        for method in group["methods"]:
            method.pop("distill_seconds")
    return board


# -- grid expansion and keys ---------------------------------------------------------------------------

GRID = {
    "base": {"data": {"dataset": "synthetic", "params": {"num_classes": 3}},
             "backbone": {"params": {"width": 8}},
             "distill": {"distiller": "gm", "params": {"batch_real": 16}, "regularizer": "curvature",
                         "regularizer_params": {"lam": 0.5}},
             "evaluate": {"epochs": 5}},
    "grid": {"dataset": ["synthetic", {"name": "fashion-mnist"}], "ipc": [1, 5], "seed": [0, 1],
             "baseline": "random",
             "method": [{"name": "random", "distiller": "random", "regularizer": "none"},
                        {"name": "gm+curvature", "regularizer_params": {"lam": 0.3}},
                        {"name": "gm", "regularizer": "none", "backbone_params": {"norm": "batch"}}]},
}


def test_grid_expands_in_a_fixed_order_with_each_part_its_own_params():
    jobs = expand(load_study(GRID))
    assert len(jobs) == 2 * 2 * 3 * 2
    assert [(j.dataset, j.ipc, j.method, j.seed) for j in jobs[:4]] == [
        ("synthetic", 1, "random", 0), ("synthetic", 1, "random", 1),
        ("synthetic", 1, "gm+curvature", 0), ("synthetic", 1, "gm+curvature", 1)]
    by = {(j.dataset, j.ipc, j.method, j.seed): j.config for j in jobs}
    rand, curv, gm = by["synthetic", 5, "random", 1], by["synthetic", 1, "gm+curvature", 0], by["synthetic", 1, "gm", 0]
    assert rand.distill.params == {} and rand.distill.regularizer_params == {} and rand.seed == 1
    assert rand.distill.ipc == 5
    assert curv.distill.params == {"batch_real": 16} and curv.distill.regularizer_params == {"lam": 0.3}
    assert gm.distill.regularizer == "none" and gm.distill.regularizer_params == {}
    assert gm.backbone.params == {"width": 8, "norm": "batch"} and curv.backbone.params == {"width": 8}
    assert by["fashion-mnist", 1, "gm", 0].data.params == {} and curv.data.params == {"num_classes": 3}
    assert all(j.config.evaluate.epochs == 5 for j in jobs)


STUDIES = Path(__file__).resolve().parents[1] / "studies"


@pytest.mark.parametrize("toml", sorted([*STUDIES.glob("*/*.toml"), *STUDIES.glob("*/*/study.toml"), SMOKE]),
                         ids=lambda p: str(p.relative_to(p.parents[2])))
def test_every_shipped_study_loads(toml):
    # the committed studies are what `studies/reproduction.py` and a rerun read: each must load as it is
    study = load_study(toml)
    assert study.methods and expand(study)


def test_baseline_is_optional_and_one_name_is_a_list_of_one():
    without = copy.deepcopy(GRID)
    del without["grid"]["baseline"]
    assert load_study(without).baselines == () and load_study(GRID).baselines == ("random",)


def test_a_method_may_have_its_own_iteration_budget():
    study = smoke_study()
    study["grid"]["method"][1]["iterations"] = 7
    budget = {j.method: j.config.distill.iterations for j in expand(load_study(study))}
    assert budget == {"random": study["base"]["distill"]["iterations"], "gm+curvature": 7}


def _first_job(study: dict, method: str):
    return next(j for j in expand(load_study(study)) if j.method == method)


def test_set_key_ignores_evaluate_and_evaluation_key_is_evaluate_alone(tmp_path):
    job = _first_job(GRID, "gm")
    changed_eval = copy.deepcopy(GRID)
    changed_eval["base"]["evaluate"]["epochs"] = 7
    other_eval = _first_job(changed_eval, "gm")
    changed_distill = copy.deepcopy(GRID)
    changed_distill["base"]["distill"]["iterations"] = 3
    other_set = _first_job(changed_distill, "gm")

    assert set_key(job.config) == set_key(other_eval.config) != set_key(other_set.config)
    assert evaluation_key(job.config) != evaluation_key(other_eval.config)
    assert evaluation_key(job.config) == evaluation_key(other_set.config)
    assert set_folder(tmp_path, job) == set_folder(tmp_path, other_eval)
    assert evaluation_folder(tmp_path, job).parent == set_folder(tmp_path, job) / "evaluation"
    assert evaluation_folder(tmp_path, job) != evaluation_folder(tmp_path, other_eval)
    folders = {set_folder(tmp_path, j) for j in expand(load_study(GRID))}
    assert len(folders) == 24  # every job its own set folder


def test_settings_no_set_depends_on_leave_its_key_as_it_was():
    changed = copy.deepcopy(GRID)
    changed["base"]["distill"].update(checkpoint_every=3, iterations=7)
    for method, same in (("random", True), ("gm", False)):  # a one-shot selector has no budget
        job, other = _first_job(GRID, method), _first_job(changed, method)
        assert (set_key(job.config) == set_key(other.config)) is same
        only_checkpoints = copy.deepcopy(other.config.to_dict())
        only_checkpoints["distill"]["iterations"] = job.config.distill.iterations
        assert set_part(only_checkpoints) == set_part(job.config)
    # keyed at the defaults, not left out: a job at its defaults keeps the name it had before
    gm = _first_job(GRID, "gm").config.to_dict()
    assert set_part(gm) == {k: v for k, v in gm.items() if k != "evaluate"}


def test_a_further_evaluation_goes_with_the_sets_of_its_ipcs_and_replaces_the_attack_plan(tmp_path):
    study = copy.deepcopy(GRID)
    study["base"]["evaluate"].update(attack="fgsm,pgd", attack_params={"pgd": {"steps": 3}}, n_test=100)
    study["grid"]["evaluation"] = [{"name": "autoattack", "ipc": 5, "suite": "autoattack", "n_test": 20},
                                   {"name": "longer", "epochs": 9}]
    jobs = expand(load_study(study))
    for job in jobs:
        names = [name for name, _ in job.extra]
        assert names == (["autoattack", "longer"] if job.ipc == 5 else ["longer"])
        for name, config in job.extra:
            assert set_key(config) == set_key(job.config)  # the same set ...
            assert evaluation_folder(tmp_path, job, config) != evaluation_folder(tmp_path, job)  # ... evaluated apart
            assert {k: v for k, v in config.to_dict().items() if k != "evaluate"} == set_part(job.config)
        extra = dict(job.extra)
        assert extra["longer"].evaluate.epochs == 9 and extra["longer"].evaluate.attack == "fgsm,pgd"
        if job.ipc == 5:
            aa = extra["autoattack"].evaluate
            assert (aa.suite, aa.attack, aa.attack_params, aa.n_test, aa.epochs) == ("autoattack", "", {}, 20, 5)


def test_shards_take_every_nth_job_and_cover_the_grid_once():
    jobs = expand(load_study(GRID))
    shards = [shard_jobs(jobs, i, 5) for i in range(5)]
    titles = [j.title for s in shards for j in s]
    assert sorted(titles) == sorted(j.title for j in jobs) and len(set(titles)) == len(jobs)
    assert [j.title for j in shards[1]] == [j.title for j in jobs[1::5]]
    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1-4", "-1/4", "0/0"):
        with pytest.raises(RddError, match="shard"):
            parse_shard(bad)


# -- bad studies fail before any job -------------------------------------------------------------------

def _with(path: str, value):
    study = smoke_study()
    *parents, last = path.split(".")
    node = study
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[last] = value
    return study


@pytest.mark.parametrize("study, message", [
    (_with("extra", {}), "unknown key study.extra"),
    (_with("grid.ipcs", [1]), "unknown key grid.ipcs"),
    (_with("grid.method.1.regulariser", "none"), r"unknown key grid.method\[1\].regulariser"),
    (_with("base.evaluate.n_tests", 3), r"study \[base\]: unknown config key evaluate.'n_tests'"),
    (_with("grid.baseline", "dc"), "grid.baseline 'dc' names no method"),
    (_with("grid.baseline", ["random", "dc"]), "grid.baseline 'dc' names no method"),
    (_with("grid.baseline", ["random", "random"]), "grid.baseline lists a method twice"),
    (_with("grid.baseline", 1), "grid.baseline must be a method's name or a list of them"),
    (_with("grid.method.1.iterations", "many"), r"grid.method\[1\].iterations must be an integer >= 0"),
    (_with("grid.ipc", [2, 0]), "grid.ipc must hold integers >= 1"),
    (_with("grid.method.1.distiller", "gmm"), "unknown distiller 'gmm'"),
    (_with("grid.method.1.regularizer_params", {"lamda": 0.3}), "regularizer 'curvature'"),
    (_with("base.evaluate.attack", "fgsm,pgdd"), "unknown attack 'pgdd'"),
    (_with("grid.evaluation", [{"name": "aa", "ipc": [10], "suite": "autoattack"}]),
     r"grid.evaluation\[0\].ipc names IPC 10, which grid.ipc does not list"),
    (_with("grid.evaluation", [{"name": "aa"}]), r"grid.evaluation\[0\] sets no evaluate key"),
    (_with("grid.evaluation", [{"name": "aa", "n_tests": 3}]), r"grid.evaluation 'aa': unknown config key"),
    (_with("grid.evaluation", [{"name": "aa", "attack": "pgdd"}]), r"evaluation 'aa': unknown attack 'pgdd'"),
    (_with("grid.evaluation", [{"name": "aa", "n_test": 3}, {"name": "aa", "n_test": 4}]),
     "grid.evaluation names lists a value twice"),
    (_with("grid.evaluation", [{"name": "same", "n_test": 40}]),
     "grid.evaluation 'same' evaluates as the main evaluation does"),
    (_with("grid.evaluation", [{"name": "a", "n_test": 3}, {"name": "b", "n_test": 3}]),
     "grid.evaluation 'b' evaluates as 'a' does"),
    # the data, loaded once per dataset before the first job: the smoke classes hold 24 images
    (_with("grid.ipc", [2, 25]), r"study job synthetic ipc 25 random seed 0: random at IPC 25 draws 25 real "
                                 r"images per class, and class 0 of synthetic has 24: keep grid.ipc at most 24"),
    (_with("base.data", {"dataset": "fashion-mnist", "root": "/nonexistent-rdd-data"}),
     r"study dataset fashion-mnist: data root /nonexistent-rdd-data does not exist \(--data-root, data.root"),
])
def test_a_bad_study_fails_in_one_line_before_any_job(tmp_path, watched, study, message):
    with pytest.raises(RddError, match=message) as error:
        api.study(study, out=tmp_path / "out", progress=False)
    assert "\n" not in str(error.value)
    assert watched == {"distill": [], "evaluate": []} and not (tmp_path / "out").exists()


def test_only_a_distiller_that_draws_real_images_is_held_to_the_class_size():
    from rdd_plugins.studies.preflight import check_data

    study = smoke_study()
    study["grid"]["ipc"] = [30]  # the smoke classes hold 24 images
    study["grid"]["method"] = [{"name": "gm-noise", "distiller": "gm", "params": {"init": "noise"}},
                               {"name": "sre2l", "distiller": "sre2l", "params": {}}]
    del study["grid"]["baseline"]
    check_data(expand(load_study(study)), plugins.get_registry())  # noise needs no real image
    study["grid"]["method"][0]["params"] = {"init": "real"}
    with pytest.raises(RddError, match="gm at IPC 30 draws 30 real images per class"):
        check_data(expand(load_study(study)), plugins.get_registry())


def test_a_missing_test_split_fails_before_the_first_job(tmp_path, monkeypatch, watched):
    from rdd_plugins.run import parts

    load_split = parts.load_split

    def without_test_files(registry, config, split):
        if split == "test":
            raise RddError("t10k-images-idx3-ubyte not found")
        return load_split(registry, config, split)

    monkeypatch.setattr(parts, "load_split", without_test_files)
    with pytest.raises(RddError, match="^study dataset synthetic: t10k-images-idx3-ubyte not found$"):
        api.study(SMOKE, out=tmp_path / "out", progress=False)
    assert watched == {"distill": [], "evaluate": []}


def test_the_cli_says_a_bad_key_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(SMOKE.read_text().replace("[grid]", "[grid]\nipcs = [1]"))
    assert main(["study", str(bad), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0 and not (tmp_path / "out").exists()


# -- the smoke study end to end --------------------------------------------------------------------------

def test_smoke_study_writes_a_leaderboard_with_both_methods(smoke_out):
    board = json.loads((smoke_out / "leaderboard.json").read_text())
    assert board["jobs"] == {"total": 4, "finished": 4}
    (group,) = board["groups"]
    assert (group["dataset"], group["ipc"], group["backbone"]) == ("synthetic", 2, "convnet (depth=2, width=8)")
    assert [m["method"] for m in group["methods"]] == ["random", "gm+curvature"]
    assert all(m["seeds"] == [0, 1] and m["clean"]["n"] == 2 and "Linf 8/255" in m["worst"]
               for m in group["methods"])
    (diff,) = group["paired"]["methods"]
    assert diff["method"] == "gm+curvature" and diff["seeds"] == [0, 1]
    assert {"clean", "Linf 8/255"} == set(diff["differences"]) and diff["differences"]["clean"]["n"] == 2
    assert group["over_random"]["random"] == "random"
    assert board["plots"] and all((smoke_out / name).stat().st_size > 0 for name in board["plots"])
    text = (smoke_out / "leaderboard.md").read_text()
    assert "| random | 2 |" in text and "| gm+curvature | 2 |" in text and "Paired against `random`" in text
    assert len(list((smoke_out / "jobs").glob("*/evaluation/*/results.json"))) == 4


def test_a_jobs_numbers_are_those_of_the_same_config_run_by_hand(smoke_out, tmp_path):
    # what the leaderboard says of a method is what `rdd distill` + `rdd evaluate` of its jobs'
    # configs give: the study adds bookkeeping, not numbers
    study = load_study(smoke_study())
    jobs = [j for j in expand(study) if j.method == "gm+curvature"]
    by_hand = []
    for job in jobs:
        folder = set_folder(smoke_out, job)
        single = api.distill(folder / "config.toml", out=tmp_path / f"seed{job.seed}", progress=False)
        assert torch.equal(single.images, rdd_plugins.load_distilled(folder).images)
        (row,) = api.evaluate(single, evaluation_folder(smoke_out, job) / "config.toml", progress=False)
        (kept,) = json.loads((evaluation_folder(smoke_out, job) / "results.json").read_text())["results"]
        assert row["summary"]["clean"] == kept["summary"]["clean"]
        assert row["summary"]["worst"] == kept["summary"]["worst"]
        by_hand.append(row["summary"])
    (group,) = json.loads((smoke_out / "leaderboard.json").read_text())["groups"]
    (entry,) = [m for m in group["methods"] if m["method"] == "gm+curvature"]
    assert entry["clean"]["mean"] == pytest.approx(sum(s["clean"]["mean"] for s in by_hand) / 2, abs=1e-4)
    assert entry["worst"]["Linf 8/255"]["mean"] == pytest.approx(
        sum(s["worst"]["Linf"]["8/255"]["mean"] for s in by_hand) / 2, abs=1e-4)


def test_a_rerun_runs_no_job(smoke_out, tmp_path, watched):
    out = tmp_path / "study"
    shutil.copytree(smoke_out, out)
    (out / "leaderboard.json").unlink()
    summary = api.study(SMOKE, out=out, progress=False)
    assert summary["done"] == {"skipped": 4} and watched == {"distill": [], "evaluate": []}
    assert _numbers(json.loads((out / "leaderboard.json").read_text())) == \
        _numbers(json.loads((smoke_out / "leaderboard.json").read_text()))


def test_the_folders_copy_of_the_study_names_it_as_the_file_did(smoke_out, tmp_path):
    copy_of_file = smoke_out / runner.STUDY_FILE
    assert load_toml(copy_of_file)["name"] == SMOKE.stem == load_study(copy_of_file).name
    assert load_study({**smoke_study(), "name": "mine"}).name == "mine"
    with pytest.raises(RddError, match="study key name must be a string"):
        load_study({**smoke_study(), "name": 3})


def _without_sets(smoke_out: Path, tmp_path: Path) -> Path:
    """A copy of the smoke study as studies/export.py leaves one: results, no sets."""
    out = tmp_path / "export"
    shutil.copytree(smoke_out, out)
    for images in out.glob(f"jobs/*/{IMAGES_FILE}"):
        images.unlink()
    return out


def test_a_run_into_results_without_their_sets_stops_before_any_work(smoke_out, tmp_path, watched, capsys):
    out = _without_sets(smoke_out, tmp_path)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(RddError, match=r"holds results without their sets \(4 jobs"):
        api.study(SMOKE, out=out, progress=False)
    assert watched == {"distill": [], "evaluate": []}
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main(["study", str(SMOKE), "--out", str(out), "--status"]) == 0
    printed = capsys.readouterr().out
    assert "4 results-only" in printed and "left at the pace" not in printed
    # nor may another study's run replace the export's leaderboard and study.toml
    with pytest.raises(RddError, match=r"holds results without their sets \(4 jobs, e.g. synthetic-ipc2-"):
        api.study(_with("grid.seed", [5]), out=out, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_the_leaderboard_is_rewritten_from_results_alone(smoke_out, tmp_path, watched, capsys):
    out = _without_sets(smoke_out, tmp_path)
    (out / "leaderboard.json").unlink()
    assert main(["study", str(SMOKE), "--out", str(out), "--leaderboard"]) == 0
    assert "4 of 4 jobs finished" in capsys.readouterr().out and watched == {"distill": [], "evaluate": []}
    assert (out / "leaderboard.json").read_text() == (smoke_out / "leaderboard.json").read_text()
    assert (out / "leaderboard.md").read_text() == (smoke_out / "leaderboard.md").read_text()
    with pytest.raises(RddError, match="no jobs/ folder"):
        api.study_leaderboard(SMOKE, out=tmp_path / "nothing-ran-here")


def test_the_leaderboard_of_another_studys_folder_is_not_replaced(smoke_out, tmp_path):
    out = tmp_path / "study"
    shutil.copytree(smoke_out, out)
    before = (out / "leaderboard.json").read_bytes()
    with pytest.raises(RddError, match="no job of study has finished in .*is this the study that ran there"):
        api.study_leaderboard(_with("base.evaluate.n_test", 30), out=out)
    assert (out / "leaderboard.json").read_bytes() == before


def _studys_own_plugins(folder: Path):
    """The plugin a committed study's distiller lives in (herding_nearest.py's), registered."""
    script = STUDIES / "fashion-mnist" / "herding_nearest.py"
    if "herding-nearest" not in folder.name:
        return None
    spec = importlib.util.spec_from_file_location("herding_nearest", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plugins.register_plugin(module.NearestPlugin(), "herding-nearest")
    return "herding-nearest"


@pytest.mark.parametrize("folder", sorted(p.parent for p in STUDIES.glob("**/leaderboard.json")),
                         ids=lambda p: str(p.relative_to(STUDIES)))
def test_a_committed_leaderboard_is_what_its_jobs_results_give(folder, tmp_path):
    # what `rdd study FOLDER/study.toml --out FOLDER --leaderboard` checks by hand: the committed
    # tables are computed from the committed per-job JSONs, number for number
    out = tmp_path / folder.name
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("*.png"))
    (out / "leaderboard.json").unlink()
    plugin = _studys_own_plugins(folder)
    try:
        api.study_leaderboard(out / runner.STUDY_FILE, out=out)
    finally:
        if plugin:
            plugins.unregister_plugin(plugin)
    assert (out / "leaderboard.json").read_text() == (folder / "leaderboard.json").read_text()
    assert (out / "leaderboard.md").read_text() == (folder / "leaderboard.md").read_text()


def test_sets_of_another_thread_count_are_named_before_work_and_in_the_leaderboard(smoke_out, tmp_path, capsys):
    # torchrun gives each process one thread where a plain run has one per core: on a CPU the same
    # config then rounds differently, and the keys hold no thread count
    def copy_with_counts(name: str, *counts) -> Path:
        """The smoke study with its gm jobs' counts edited and one random job to run again."""
        out = tmp_path / name
        shutil.copytree(smoke_out, out)
        for meta_file, count in zip(sorted(out.glob("jobs/*gm*/meta.json")), counts):
            meta = json.loads(meta_file.read_text())
            assert meta["cpu_threads"] == mine and meta["device"] == "cpu"
            meta_file.write_text(json.dumps({**meta, "cpu_threads": count}))
        shutil.rmtree(next(out.glob("jobs/*random-seed0*")))
        return out

    mine = torch.get_num_threads()
    other = mine + 5
    out = copy_with_counts("other", other)
    api.study(SMOKE, out=out, progress=False)
    assert f"made with {other} threads, this process has {mine}" in capsys.readouterr().err
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["cpu_threads"] == dict(sorted({str(mine): 3, str(other): 1}.items(), key=lambda kv: int(kv[0])))
    assert "CPU sets made with different thread counts" in (out / "leaderboard.md").read_text()
    assert "different thread counts" not in (smoke_out / "leaderboard.md").read_text()
    # nothing to say: no work to do; one count, this process's; a count that was not recorded
    api.study(SMOKE, out=out, progress=False)
    api.study(SMOKE, out=copy_with_counts("same"), progress=False)
    api.study(SMOKE, out=copy_with_counts("unrecorded", None), progress=False)
    assert "threads" not in capsys.readouterr().err


def test_a_failing_job_is_reported_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    def failing_gm(config, registry, folder, **kw):
        if config.distill.distiller == "gm":
            raise RddError("iteration 0: non-finite loss")
        return distill(config, registry, folder, **kw)

    distill = runner.distill_set
    monkeypatch.setattr(runner, "distill_set", failing_gm)
    with pytest.raises(RddError, match=r"^2 of 4 jobs failed \(the others are in .*\): synthetic ipc 2 gm\+curvature "
                                       r"seed 0: iteration 0: non-finite loss$"):
        api.study(SMOKE, out=tmp_path / "study", progress=False)
    assert capsys.readouterr().err.count("failed: iteration 0: non-finite loss") == 2
    board = json.loads((tmp_path / "study" / "leaderboard.json").read_text())
    assert board["jobs"] == {"total": 4, "finished": 2}  # random's two jobs ran, and count
    only_gm = smoke_study()
    only_gm["grid"]["method"] = only_gm["grid"]["method"][1:]
    del only_gm["grid"]["baseline"]
    with pytest.raises(RddError, match=r"^2 of 2 jobs failed: "):  # no "others" to point at
        api.study(only_gm, out=tmp_path / "gm-only", progress=False)


def _numbers_of(folder: Path) -> dict:
    """Per job folder and evaluation: every model's clean, per-attack and worst-case numbers."""
    numbers = {}
    for path in sorted(folder.glob("jobs/*/evaluation/*/results.json")):
        (row,) = json.loads(path.read_text())["results"]
        numbers[str(path.relative_to(folder))] = [(m["clean"], {a: {e: r["robust"] for e, r in per.items()}
                                                                for a, per in m["attacks"].items()}, m["worst"])
                                                  for m in row["per_seed"]]
    return numbers


def test_a_changed_evaluate_setting_re_evaluates_without_re_distilling(smoke_out, tmp_path, watched, capsys):
    out = tmp_path / "study"
    shutil.copytree(smoke_out, out)
    study = _with("base.evaluate.n_test", 30)
    summary = api.study(study, out=out, progress=False)
    assert summary["done"] == {"re-evaluated": 4}
    assert watched["distill"] == [] and len(watched["evaluate"]) == 4
    assert all(len(list(p.glob("evaluation/*/results.json"))) == 2 for p in (out / "jobs").iterdir())
    rows = [json.loads(p.read_text())["results"][0] for p in (out / "jobs").glob("*/evaluation/*/results.json")]
    assert sorted(r["evaluation"]["n_test"] for r in rows) == [30] * 4 + [40] * 4
    # the evaluation models were trained once: attacking the kept ones gives a fresh training's numbers
    assert capsys.readouterr().err.count("trained model reused") == 4
    fresh = tmp_path / "fresh"
    shutil.copytree(smoke_out, fresh)
    for models in fresh.glob("jobs/*/evaluation/models"):
        shutil.rmtree(models)
    api.study(study, out=fresh, progress=False)
    assert "trained model reused" not in capsys.readouterr().err
    assert _numbers_of(out) == _numbers_of(fresh)
    # a training setting is keyed: other epochs train models of their own
    api.study(_with("base.evaluate.epochs", 4), out=out, progress=False)
    assert "trained model reused" not in capsys.readouterr().err
    assert all(len(list((p / "evaluation" / "models").iterdir())) == 2 for p in (out / "jobs").iterdir())


def test_a_damaged_set_is_distilled_again_beside_its_kept_models(smoke_out, tmp_path, watched):
    # the kept models are what rdd derived from the set: they go with it, and stop nothing
    out = tmp_path / "study"
    shutil.copytree(smoke_out, out)
    gm = next(j for j in expand(load_study(SMOKE)) if j.method == "gm+curvature")
    images = set_folder(out, gm) / IMAGES_FILE
    images.write_bytes(images.read_bytes()[:100])
    (set_folder(out, gm) / CHECKPOINT_FILE).unlink()  # no resume: a fresh distillation replaces the folder
    summary = api.study(_with("base.evaluate.n_test", 30), out=out, progress=False)
    assert summary["done"] == {"re-evaluated": 3, "distilled": 1}
    assert watched["distill"] == [(set_folder(out, gm).name, False)]
    assert torch.equal(load_distilled(set_folder(out, gm)).images, load_distilled(set_folder(smoke_out, gm)).images)


def test_a_damaged_kept_model_is_trained_again(tmp_path):
    from rdd_plugins.evaluation.seed_cache import ModelCache

    make_model = lambda: torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))  # noqa: E731
    cache = ModelCache(tmp_path, {"evaluate": {"epochs": 3, "eps": ["8/255"]}}, "sha", "cpu")
    trained = make_model()
    cache.put("lin", {}, 0, trained, 1.5)
    model, seconds = cache.get("lin", {}, 0, make_model)
    assert seconds == 1.5 and not model.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    other_eps = ModelCache(tmp_path, {"evaluate": {"epochs": 3, "eps": ["2/255"]}}, "sha", "cpu")
    assert other_eps.get("lin", {}, 0, make_model) is not None  # attacks are not part of a model's key
    assert ModelCache(tmp_path, {"evaluate": {"epochs": 4}}, "sha", "cpu").get("lin", {}, 0, make_model) is None
    (path,) = tmp_path.iterdir()
    path.write_bytes(path.read_bytes()[:20])
    assert cache.get("lin", {}, 0, make_model) is None


def test_a_setting_no_set_depends_on_re_runs_only_the_jobs_it_touches(smoke_out, tmp_path, watched):
    out = tmp_path / "study"
    shutil.copytree(smoke_out, out)
    study = _with("base.distill.checkpoint_every", 1)
    assert api.study(study, out=out, progress=False)["done"] == {"skipped": 4}
    study["base"]["distill"]["iterations"] = 3  # the random subsets take no iterations
    assert api.study(study, out=out, progress=False)["done"] == {"skipped": 2, "distilled": 2}
    assert len(watched["distill"]) == 2 and all("gm+curvature" in name for name, _ in watched["distill"])
    assert sorted(watched["evaluate"]) == sorted(name for name, _ in watched["distill"])


def test_folders_named_before_such_settings_were_recognised_are_adopted(smoke_out, tmp_path, watched):
    # an rdd of before keyed checkpoint_every = 5 into every name; today's key holds it at 10
    out = tmp_path / "study"
    shutil.copytree(smoke_out, out)
    study = _with("base.distill.checkpoint_every", 5)
    for job in expand(load_study(study)):
        earlier = digest({k: v for k, v in job.config.to_dict().items() if k != "evaluate"})
        set_folder(out, job).rename(set_folder(out, job).with_name(
            set_folder(out, job).name.rsplit("-", 1)[0] + "-" + earlier[:12]))
    assert not any(set_folder(out, j).exists() for j in expand(load_study(study)))
    assert api.study(study, out=out, progress=False)["done"] == {"skipped": 4} and watched["distill"] == []
    assert all(set_folder(out, j).is_dir() for j in expand(load_study(study)))
    assert len(list((out / "jobs").iterdir())) == 4


def test_status_says_what_each_job_needs_and_writes_nothing(smoke_out, tmp_path, watched, capsys):
    out = tmp_path / "study"
    shutil.copytree(smoke_out, out)
    gm = next(j for j in expand(load_study(smoke_study())) if j.method == "gm+curvature")
    shutil.rmtree(set_folder(out, gm))
    files = sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*"))

    assert api.study_status(SMOKE, out=out)["counts"] == {"finished": 3, "distil": 1}
    rows = api.study_status(_with("base.evaluate.n_test", 30), out=out)["rows"]
    assert [r["state"] for r in rows] == ["evaluate", "evaluate", "distil", "evaluate"]
    assert rows[0]["missing"] == rows[0]["of"] == 1
    assert main(["study", str(SMOKE), "--out", str(out), "--status", "--shard", "1/2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].endswith("shard 1/2: 2 finished (of 2 jobs)") and len(lines) == 3  # nothing left there
    # the removed job is priced at its finished peer's pace: gm+curvature seed 1's seconds
    peer = set_folder(out, next(j for j in expand(load_study(smoke_study())) if j.method == "gm+curvature" and j.seed == 1))
    (results,) = peer.glob("evaluation/*/results.json")
    expected = json.loads((peer / "meta.json").read_text())["seconds"] + evaluation_seconds(
        json.loads(results.read_text())["results"])
    assert api.study_status(SMOKE, out=out)["left"] == {"seconds": pytest.approx(expected), "unpriced": 0}
    assert main(["study", str(SMOKE), "--out", str(out), "--status"]) == 0
    assert "left at the pace of the finished jobs" in capsys.readouterr().out
    assert [_duration(s) for s in (0.3, 30, 600, 7200)] == ["1 s", "30 s", "10 min", "2.0 h"]
    assert sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*")) == files and watched == {"distill": [], "evaluate": []}
    assert api.study_status(SMOKE, out=tmp_path / "none")["counts"] == {"distil": 4}
    assert main(["study", str(SMOKE), "--out", str(tmp_path / "none"), "--status"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        "no time estimate: no unfinished job (4) has a finished job of the same method and IPC to go by"
    assert not (tmp_path / "none").exists()


def test_the_time_left_is_priced_at_the_pace_of_finished_peers_and_unpriced_without_one():
    study = _with("grid.evaluation", [{"name": "pgd-16", "attack": "pgd", "eps": ["16/255"]}])
    random0, random1, gm0, gm1 = sorted(expand(load_study(study)), key=lambda j: (j.method != "random", j.seed))

    def spent(distil, *evaluations):
        return {"distil": distil, "evaluations": list(evaluations)}

    statuses = [{"state": "finished", "seconds": spent(1.0, 10.0, 30.0)},
                {"state": "evaluate", "missing": 1, "of": 2, "seconds": spent(3.0, 12.0, None)},
                {"state": "finished", "seconds": spent(100.0, 20.0, None)},  # its further evaluation not run
                {"state": "resume", "iteration": 1, "iterations": 4}]
    jobs = [random0, random1, gm0, gm1]

    def left(mine=None):
        return seconds_left(jobs, {job.title: status for job, status in zip(jobs, statuses)}, mine)

    # random seed 1 needs the further evaluation (30 s); gm seed 1 3/4 of a distillation and two
    # evaluations, but no gm job has finished the further one
    assert left() == {"seconds": 30.0, "unpriced": 1}
    statuses[2]["seconds"]["evaluations"][1] = 50.0
    assert left() == {"seconds": 30.0 + 75.0 + 20.0 + 50.0, "unpriced": 0}
    assert left([gm1]) == {"seconds": 145.0, "unpriced": 0}
    statuses[3] = {"state": "distil"}
    assert left([gm1]) == {"seconds": 170.0, "unpriced": 0}


def test_a_further_evaluation_reuses_the_sets_and_gets_its_own_tables(smoke_out, tmp_path, watched, capsys):
    out = tmp_path / "study"
    shutil.copytree(smoke_out, out)
    study = _with("grid.evaluation", [{"name": "pgd-16", "attack": "pgd", "eps": ["16/255"], "n_test": 20}])
    summary = api.study(study, out=out, progress=False)
    assert summary["done"] == {"re-evaluated": 4} and watched["distill"] == [] and len(watched["evaluate"]) == 4
    assert capsys.readouterr().err.count("trained model reused") == 4  # it attacks the main evaluation's models
    board = json.loads((out / "leaderboard.json").read_text())
    main_groups = [g for g in board["groups"] if g["evaluation"] == ""]
    (further,) = [g for g in board["groups"] if g["evaluation"] == "pgd-16"]
    assert further["columns"] == [["Linf", "16/255"]] and board["jobs"] == {"total": 4, "finished": 4}
    assert _numbers({"groups": main_groups}) == _numbers({"groups": json.loads(
        (smoke_out / "leaderboard.json").read_text())["groups"]})  # the main tables unchanged
    rows = [json.loads(p.read_text())["results"][0] for p in (out / "jobs").glob("*/evaluation/*/results.json")]
    assert sorted(r["evaluation"]["n_test"] for r in rows) == [20] * 4 + [40] * 4
    assert "evaluation `pgd-16`" in (out / "leaderboard.md").read_text()
    assert api.study(study, out=out, progress=False)["done"] == {"skipped": 4} and len(watched["evaluate"]) == 4


def test_two_shards_cover_the_jobs_once_and_give_the_unsharded_leaderboard(smoke_out, tmp_path, watched):
    out = tmp_path / "study"
    first = api.study(SMOKE, out=out, shard="0/2", progress=False)
    after_first = set(watched["distill"])
    assert first["shard_jobs"] == 2 and len(after_first) == 2
    assert json.loads((out / "leaderboard.json").read_text())["jobs"] == {"total": 4, "finished": 2}
    assert main(["study", str(SMOKE), "--out", str(out), "--shard", "1/2", "--no-progress"]) == 0
    folders = [name for name, _ in watched["distill"]]
    assert len(folders) == 4 and len(set(folders)) == 4 and sorted(watched["evaluate"]) == sorted(folders)
    assert _numbers(json.loads((out / "leaderboard.json").read_text())) == \
        _numbers(json.loads((smoke_out / "leaderboard.json").read_text()))


class _StopAfterFirstIteration:
    @rdd_plugins.hookimpl
    def rdd_distill_step(self, step):
        if step.iteration == 1:
            raise KeyboardInterrupt  # as a second Ctrl-C would, mid-run


def test_an_interrupted_distillation_resumes_from_its_checkpoint(tmp_path, watched):
    study = smoke_study()
    study["base"]["distill"]["checkpoint_every"] = 1
    study["grid"].update(seed=[0], baseline="")
    study["grid"]["method"] = study["grid"]["method"][1:]
    plugins.register_plugin(_StopAfterFirstIteration(), "stopper")
    with pytest.raises(KeyboardInterrupt):
        api.study(study, out=tmp_path, progress=False)
    (folder,) = (tmp_path / "jobs").iterdir()
    assert json.loads((folder / "meta.json").read_text())["interrupted"]
    assert (folder / "checkpoint.safetensors").is_file() and watched["evaluate"] == []
    (row,) = api.study_status(study, out=tmp_path)["rows"]
    assert (row["state"], row["iteration"], row["iterations"]) == ("resume", 1, 2)

    plugins.unregister_plugin("stopper")
    summary = api.study(study, out=tmp_path, progress=False)
    assert summary["done"] == {"resumed": 1} and watched["distill"][-1] == (folder.name, True)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["completed_iterations"] == 2 and not meta["interrupted"]
    assert json.loads((tmp_path / "leaderboard.json").read_text())["jobs"]["finished"] == 1


def test_paired_differences_and_spread():
    assert paired([1.0, 3.0]) == {"mean": 2.0, "se": 1.0, "ahead": 2, "n": 2}
    assert paired([-1.0]) == {"mean": -1.0, "se": None, "ahead": 0, "n": 1}
    assert spread([10.0, 20.0]) == {"mean": 15.0, "std": 5.0, "n": 2}


def test_the_markdown_rounds_once_from_the_exact_statistics():
    stat = spread([0.0, 8.1492])  # mean and std 4.0746: 4.07, where rounding to 3 first gave 4.08
    assert spread_cell(stat) == "4.07 ± 4.07"
    assert rounded({"groups": [{"clean": stat}]}) == {"groups": [{"clean": {"mean": 4.0746, "std": 4.0746, "n": 2}}]}


# -- gradient-masking and protocol checks ------------------------------------------------------------

def make_row(per_attack: dict, clean: float = 80.0, cascade: bool = False, worst: dict | None = None) -> dict:
    """A results.json row: per attack, eps -> robust %; the worst case is the cumulative minimum."""
    eps = sorted({e for per in per_attack.values() for e in per}, key=parse_eps)
    if worst is None:
        worst, running = {}, clean
        for e in eps:
            running = min([running] + [per[e] for per in per_attack.values() if e in per])
            worst[e] = running
    stat = lambda v: {"mean": v, "std": 0.0, "n": 1}  # noqa: E731
    return {
        "label": "m", "backbone": "convnet",
        "evaluation": {"cascade": cascade,
                       "attacks": [{"attack": a, "params": {}, "threat_model": "Linf", "eps": list(per)}
                                   for a, per in per_attack.items()]},
        "summary": {"clean": stat(clean),
                    "attacks": {a: {e: {"robust": stat(v), "success_rate": None} for e, v in per.items()}
                                for a, per in per_attack.items()},
                    "worst": {"Linf": {e: stat(v) for e, v in worst.items()}}},
    }


SOUND = {"fgsm": {"2/255": 60.0, "8/255": 40.0, "0.3": 5.0},
         "pgd": {"2/255": 55.0, "8/255": 30.0, "0.3": 0.0},
         "apgd-ce": {"2/255": 54.0, "8/255": 29.0, "0.3": 0.0},
         "square": {"2/255": 58.0, "8/255": 35.0, "0.3": 2.0}}


def _changed(attack: str, eps: str, value: float) -> dict:
    per = copy.deepcopy(SOUND)
    per[attack][eps] = value
    return per


TRIPS = [
    (checks.robust_above_clean, make_row(SOUND, clean=50.0), "robust above clean: fgsm at 2/255"),
    (checks.robust_above_clean, make_row(SOUND, worst={"2/255": 90.0}), "worst case Linf 2/255 90.00"),
    (checks.single_step_stronger, make_row(_changed("fgsm", "8/255", 20.0)), "fgsm 20.00 < pgd 30.00 at Linf 8/255"),
    (checks.single_step_stronger, make_row(_changed("fgsm", "8/255", 28.0)), "fgsm 28.00 < apgd-ce 29.00"),
    (checks.robust_rising_with_eps, make_row(_changed("pgd", "8/255", 57.0)), "pgd 55.00 at 2/255 -> 57.00 at 8/255"),
    (checks.robust_rising_with_eps, make_row(SOUND, worst={"2/255": 40.0, "8/255": 45.0}), "worst case Linf"),
    (checks.black_box_stronger, make_row(_changed("square", "8/255", 10.0)), "square at Linf 8/255"),
    (checks.robust_at_huge_eps, make_row(SOUND, worst={"8/255": 30.0, "0.3": 25.0}), "25.00 % (> 10) at Linf 0.3"),
]


@pytest.mark.parametrize("check, row, flag", TRIPS)
def test_each_check_flags_a_row_built_to_trip_it(check, row, flag):
    found = check(row)
    assert any(flag in f for f in found), found
    assert any(flag in f for f in checks.protocol_flags(row))


def test_a_sound_row_trips_no_check():
    row = make_row(SOUND)
    assert checks.protocol_flags(row) == []
    assert all(check(row) == [] for check in checks.CHECKS)


def test_attack_comparisons_need_uncascaded_rows():
    # a cascaded attack's accuracy is cumulative over the ones before it: nothing to compare
    row = make_row(_changed("square", "8/255", 10.0), cascade=True)
    row["summary"]["attacks"]["fgsm"]["8/255"]["robust"]["mean"] = 20.0
    assert checks.single_step_stronger(row) == [] and checks.black_box_stronger(row) == []
    assert checks.single_step_stronger(make_row(_changed("fgsm", "8/255", 30.0))) == []  # a tie is no flag


def test_flags_come_in_the_evaluations_eps_order_whatever_the_hash_seed():
    # the leaderboard's bytes must not depend on PYTHONHASHSEED (diffing two leaderboards)
    eps = ["2/255", "4/255", "8/255", "16/255", "0.1"]
    row = make_row({"fgsm": {e: 10.0 for e in eps}, "pgd": {e: 20.0 for e in eps}})
    flagged = [flag.rsplit(" at Linf ", 1)[1] for flag in checks.single_step_stronger(row)]
    assert flagged == eps


def test_leaderboard_pairs_same_seed_jobs_and_draws_robust_vs_ipc(tmp_path):
    from rdd_plugins.studies.leaderboard import leaderboard
    from rdd_plugins.studies.plots import write_plots

    study = load_study({"base": {"data": {"dataset": "synthetic"}},
                        "grid": {"ipc": [1, 10], "seed": [0, 1], "baseline": "random",
                                 "method": [{"name": "random", "distiller": "random", "params": {}},
                                            {"name": "gm"}]}})
    jobs = expand(study)
    records = []
    for j in jobs:
        gain = (2.0 + j.seed) if j.method == "gm" else 0.0  # gm ahead by 2 and 3 points
        row = make_row({"pgd": {"8/255": 30.0 + gain + j.ipc}}, clean=70.0 + gain)
        records.append({"dataset": j.dataset, "ipc": j.ipc, "method": j.method, "seed": j.seed,
                        "backbone": "convnet", "seconds": 1.0 if j.method == "random" else 50.0, "row": row})
    board = leaderboard(study, jobs, records[:-1])  # the last job (gm, ipc 10, seed 1) unfinished
    assert board["jobs"] == {"total": 8, "finished": 7} and board["random_method"] == "random"
    ipc1, ipc10 = board["groups"]
    (diff,) = ipc1["paired"]["methods"]
    assert diff["differences"]["clean"] == {"mean": 2.5, "se": 0.5, "ahead": 2, "n": 2}
    assert ipc1["over_random"]["methods"][0]["differences"]["Linf 8/255"]["mean"] == 2.5
    assert ipc10["paired"]["methods"][0]["seeds"] == [0]
    assert ipc10["methods"][1]["worst"]["Linf 8/255"] == {"mean": 42.0, "std": 0.0, "n": 1}
    assert write_plots(tmp_path, board) == ["synthetic_robust_vs_eps.png", "synthetic_robust_vs_ipc.png",
                                            "synthetic_robust_vs_seconds.png"]


def test_the_leaderboard_takes_each_models_numbers_not_the_rounded_summary():
    import math

    from rdd_plugins.studies.leaderboard import leaderboard
    from rdd_plugins.studies.markdown import _difference

    study = load_study({"base": {"data": {"dataset": "synthetic"}},
                        "grid": {"ipc": [1], "seed": [0], "method": [{"name": "gm"}]}})
    (job,) = expand(study)
    row = make_row({"pgd": {"8/255": 33.333}}, clean=33.333)  # summaries keep 3 decimals
    row["per_seed"] = [{"seed": 0, "clean": 1 / 3, "worst": {"Linf": {"8/255": 1 / 3}}}]
    record = {"dataset": job.dataset, "ipc": 1, "method": "gm", "seed": 0, "backbone": "convnet", "seconds": 1.0,
              "row": row}
    (entry,) = rounded(leaderboard(study, [job], [record]))["groups"][0]["methods"]
    assert entry["clean"]["mean"] == entry["worst"]["Linf 8/255"]["mean"] == 33.3333
    # a difference that is zero but for a float sum's last bits is +0, in the JSON and the markdown
    assert math.copysign(1.0, rounded(-1e-12)) == 1.0
    assert _difference({"mean": -1e-12, "se": 1.2, "ahead": 1, "n": 3}).startswith("+0.00 ± 1.20")


def test_backbones_of_other_params_get_their_own_tables_each_paired_against_its_baseline():
    # SRe2L's sets on a BatchNorm ConvNet beside DC's on the instance-norm one: no difference may be
    # taken across the two, and each table pairs against the first listed baseline it has
    from rdd_plugins.studies.leaderboard import backbone_label, leaderboard

    study = load_study({"base": {"data": {"dataset": "synthetic"}, "backbone": {"params": {"width": 8}}},
                        "grid": {"ipc": [1], "seed": [0, 1], "baseline": ["random", "sre2l"],
                                 "method": [{"name": "random", "distiller": "random", "params": {}},
                                            {"name": "gm"},
                                            {"name": "sre2l", "backbone_params": {"norm": "batch"}},
                                            {"name": "sre2l+curvature", "backbone_params": {"norm": "batch"}}]}})
    jobs = expand(study)
    records = []
    for j in jobs:
        gain = {"random": 0.0, "gm": 1.0, "sre2l": 10.0, "sre2l+curvature": 13.0 + j.seed}[j.method]
        row = make_row({"pgd": {"8/255": 30.0 + gain}}, clean=70.0)
        row["evaluation"]["backbone_params"] = j.config.backbone.params
        records.append({"dataset": j.dataset, "ipc": j.ipc, "method": j.method, "seed": j.seed,
                        "backbone": backbone_label("convnet", j.config.backbone.params), "seconds": 1.0, "row": row})
    # the first baseline has not finished: the table waits for it rather than pair against the next
    unfinished_random = leaderboard(study, jobs, [r for r in records if r["method"] != "random"])
    assert unfinished_random["groups"][0]["paired"] == {"baseline": "random", "methods": []}
    board = leaderboard(study, jobs, records)
    assert board["baselines"] == ["random", "sre2l"]
    instance, batch = board["groups"]
    assert (instance["backbone"], batch["backbone"]) == ("convnet (width=8)", "convnet (norm=batch, width=8)")
    assert [m["method"] for m in instance["methods"]] == ["random", "gm"]
    assert [m["method"] for m in batch["methods"]] == ["sre2l", "sre2l+curvature"]
    assert instance["paired"]["baseline"] == "random" and instance["over_random"]["random"] == "random"
    assert batch["paired"]["baseline"] == "sre2l" and batch["over_random"] is None
    (diff,) = batch["paired"]["methods"]
    assert diff["method"] == "sre2l+curvature" and diff["differences"]["Linf 8/255"]["mean"] == 3.5
    assert backbone_label("resnet18", {}) == "resnet18"
    assert backbone_label("convnet", {"width": 8, "affine": True}) == "convnet (affine=true, width=8)"


def test_each_method_keeps_one_look_that_no_other_method_has():
    from rdd_plugins.studies.plots import method_styles

    methods = [f"method{i}" for i in range(13)]  # the Fashion-MNIST study's count: past one colour cycle
    styles = method_styles(methods)
    assert len({(s["color"], s["marker"]) for s in styles.values()}) == 13
    assert method_styles(methods[:4]) == {m: styles[m] for m in methods[:4]}  # the order decides, not the count



def test_a_methods_look_is_the_studys_order_not_the_finished_jobs(tmp_path, monkeypatch):
    from rdd_plugins.studies import plots

    drawn = []
    monkeypatch.setattr(plots, "robust_vs_eps", lambda plt, groups, path, styles: drawn.append(styles))
    monkeypatch.setattr(plots, "robust_vs_ipc", lambda *a: False)
    monkeypatch.setattr(plots, "robust_vs_seconds", lambda *a: False)
    group = {"dataset": "d", "evaluation": "", "methods": [{"method": "gm"}]}  # random has not finished
    plots.write_plots(tmp_path, {"groups": [group], "methods": ["random", "gm"]})
    assert drawn[0]["gm"] == plots.method_styles(["random", "gm"])["gm"] != plots.method_styles(["gm"])["gm"]
