"""Run folders never lose a finished set: refused or staged overwrites, checkpoints on Ctrl-C,
extended runs, derived results that go with their set, files colleagues can read."""

import json
from importlib import metadata
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import rdd_plugins
from rdd_plugins.checkpoint import CHECKPOINT_FILE, load_checkpoint
from rdd_plugins.errors import RddError
from rdd_plugins.run.folder import StagedRun

RDD = str(Path(sys.executable).parent / "rdd")


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.rdd-")]


class FailingAt:
    """A distiller that fails in ``init`` (at=0) or in step ``at``."""

    iterations_needed = True

    def __init__(self, at: int = 0):
        self.at = at

    def init(self, context):
        if self.at == 0:
            raise RddError("init refused")
        return {"images": torch.full((context.num_classes * context.ipc, 1, 8, 8), 0.5), "steps": 0}

    def step(self, state, context):
        state["steps"] += 1
        if state["steps"] >= self.at:
            raise RuntimeError("step failed")
        return {"loss": 1.0}

    def result(self, state, context):
        return state["images"], torch.arange(context.num_classes).repeat_interleave(context.ipc)


@pytest.fixture
def failing():
    class Plugin:
        @rdd_plugins.hookimpl
        def rdd_register_distillers(self, register):
            register("failing", FailingAt)

    rdd_plugins.plugins.register_plugin(Plugin(), name="failing")
    yield
    rdd_plugins.plugins.unregister_plugin("failing")


@pytest.fixture
def finished(tmp_path, make_config):
    """A run folder holding a finished, evaluated and benchmarked set."""
    out = tmp_path / "run"
    rdd_plugins.distill(make_config(iterations=2, checkpoint_every=1), out=out, progress=False)
    for derived in ("evaluation", "benchmark"):
        (out / derived).mkdir()
        (out / derived / "report.md").write_text("the old set's results")
    return out


def test_a_fresh_run_into_a_finished_run_needs_overwrite(finished, make_config):
    before = snapshot(finished)
    with pytest.raises(RddError, match="already holds a distilled set .*--overwrite"):
        rdd_plugins.distill(make_config(iterations=2), out=finished, progress=False)
    assert snapshot(finished) == before and not leftovers(finished)


@pytest.mark.parametrize("where", ["unknown part", "wrong type", "init", "step before the first checkpoint"])
def test_a_failed_overwrite_leaves_the_finished_run_as_it_was(finished, make_config, failing, where):
    before = snapshot(finished)
    cfg = {"unknown part": make_config(iterations=2, distiller="gmm"),
           "wrong type": make_config(iterations=2, params={"lr_img": "abc"}),
           "init": make_config(iterations=2, distiller="failing", params={"at": 0}),
           "step before the first checkpoint": make_config(iterations=9, distiller="failing", params={"at": 3},
                                                           checkpoint_every=5)}[where]
    with pytest.raises((RddError, RuntimeError)):
        rdd_plugins.distill(cfg, out=finished, progress=False, overwrite=True)
    assert snapshot(finished) == before and not leftovers(finished)


def test_an_overwrite_replaces_the_set_and_what_was_derived_from_it(finished, make_config):
    new = rdd_plugins.distill(make_config(iterations=2, ipc=3), out=finished, progress=False, overwrite=True)
    assert rdd_plugins.load_distilled(finished).images.shape == new.images.shape == (12, 1, 8, 8)
    assert not (finished / "evaluation").exists() and not (finished / "benchmark").exists()
    assert not leftovers(finished)


def test_a_folder_with_other_files_is_not_taken_for_a_run(tmp_path, make_config):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RddError, match="not a run's"):
        rdd_plugins.distill(make_config(), out=tmp_path, progress=False, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_swap_killed_between_its_renames_is_undone(finished):
    retired = finished.parent / f".{finished.name}.rdd-old"
    os.rename(finished, retired)  # as if killed after the first rename
    before = snapshot(retired)
    StagedRun(finished, overwrite=True)
    assert snapshot(finished) == before and not retired.exists()


def interrupt_at(iteration: int):
    """A plugin that presses Ctrl-C during ``iteration`` (the loop then stops after it)."""
    class Plugin:
        @rdd_plugins.hookimpl
        def rdd_distill_step(self, step):
            if step.iteration == iteration:
                os.kill(os.getpid(), signal.SIGINT)

    return Plugin()


def test_ctrl_c_before_the_first_checkpoint_saves_one_and_resume_is_exact(tmp_path, make_config, capsys):
    cfg = make_config(iterations=6, checkpoint_every=100)
    reference = rdd_plugins.distill(cfg, progress=False)
    rdd_plugins.plugins.register_plugin(interrupt_at(2), name="ctrl-c")
    try:
        with pytest.raises(KeyboardInterrupt):
            rdd_plugins.distill(cfg, out=tmp_path / "run", progress=False)
    finally:
        rdd_plugins.plugins.unregister_plugin("ctrl-c")
    run = tmp_path / "run"
    assert load_checkpoint(run, torch.device("cpu"))[0] == 2
    half = rdd_plugins.load_distilled(run)
    assert half.meta["interrupted"] and half.meta["completed_iterations"] == 2

    # evaluating the half-made set says so, on stderr and in the report
    capsys.readouterr()
    rows = rdd_plugins.evaluate(run, out=run / "evaluation", progress=False,
                                overrides={"evaluate": {"seeds": 1, "epochs": 2, "n_test": 20}})
    assert rows[0]["set"]["unfinished"] == "interrupted at 2/6"
    assert "interrupted at 2/6" in capsys.readouterr().err
    assert "interrupted at 2/6" in (run / "evaluation" / "report.md").read_text()

    resumed = rdd_plugins.distill(out=run, resume=True, progress=False)
    assert torch.equal(resumed.images, reference.images) and not resumed.meta["interrupted"]
    assert not (run / "evaluation").exists()  # it described the half-made set


def test_a_run_is_extended_by_resuming_with_more_iterations(tmp_path, make_config):
    longer = rdd_plugins.distill(make_config(iterations=5, checkpoint_every=1), progress=False)
    rdd_plugins.distill(make_config(iterations=3, checkpoint_every=1), out=tmp_path / "run", progress=False)
    with pytest.raises(RddError, match="cannot shorten"):
        rdd_plugins.distill(out=tmp_path / "run", resume=True, progress=False,
                            overrides={"distill": {"iterations": 2}})
    extended = rdd_plugins.distill(out=tmp_path / "run", resume=True, progress=False,
                                   overrides={"distill": {"iterations": 5}})
    assert torch.equal(extended.images, longer.images)
    assert extended.meta["completed_iterations"] == 5 and "iterations = 5" in (tmp_path / "run" / "config.toml").read_text()
    history = json.loads((tmp_path / "run" / "history.json").read_text())["history"]
    assert [h["iteration"] for h in history] == [0, 1, 2, 3, 4]


def test_results_are_readable_by_colleagues(tmp_path, make_config):
    old = os.umask(0o022)
    try:
        rdd_plugins.distill(make_config(iterations=1), out=tmp_path / "run", progress=False)
    finally:
        os.umask(old)
    for name in ("images.safetensors", "meta.json", "config.toml", "history.json", CHECKPOINT_FILE):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644, name


def test_a_rerun_evaluation_says_which_seeds_it_reused(tmp_path, make_config, capsys):
    ds = rdd_plugins.distill(make_config(iterations=1), progress=False)
    settings = {"evaluate": {"seeds": 1, "epochs": 2, "n_test": 20}}
    rdd_plugins.evaluate(ds, out=tmp_path / "eval", progress=False, overrides=settings)
    capsys.readouterr()
    rdd_plugins.evaluate(ds, out=tmp_path / "eval", progress=False, overrides=settings)
    assert "seed 0: reused" in capsys.readouterr().err


def test_version_names_the_package_and_torch():
    proc = subprocess.run([RDD, "--version"], capture_output=True, text=True, check=True)
    assert proc.stdout.startswith(f"rdd-plugins {rdd_plugins.__version__}") and f"torch {metadata.version('torch')}" in proc.stdout


def test_evaluations_written_inside_the_run_go_with_its_set_and_user_files_stop_a_replacement(
        finished, make_config):
    settings = {"evaluate": {"seeds": 1, "epochs": 2, "n_test": 20}}
    rdd_plugins.evaluate(finished, out=finished / "attacks", progress=False, overrides=settings)
    (finished / "evaluation" / "mynotes.md").write_text("mine")
    with pytest.raises(RddError, match=r"not a run's \(evaluation/mynotes.md\)"):
        rdd_plugins.distill(make_config(iterations=2), out=finished, progress=False, overwrite=True)
    with pytest.raises(RddError, match=r"evaluation/mynotes.md"):
        rdd_plugins.distill(out=finished, resume=True, progress=False, overrides={"distill": {"iterations": 3}})
    assert (finished / "evaluation" / "mynotes.md").read_text() == "mine" and (finished / "attacks").is_dir()

    (finished / "evaluation" / "mynotes.md").unlink()
    rdd_plugins.distill(out=finished, resume=True, progress=False, overrides={"distill": {"iterations": 3}})
    assert not (finished / "attacks").exists() and not (finished / "evaluation").exists()


def test_temporary_files_of_a_killed_write_do_not_stop_a_resume(tmp_path, make_config):
    """SIGKILL during an atomic write leaves its temporary file; it is rdd's, not the user's."""
    run = tmp_path / "run"
    rdd_plugins.distill(make_config(iterations=2, checkpoint_every=1), out=run, progress=False)
    (run / ".checkpoint.safetensors.k1ll3d").write_bytes(b"half")
    (run / "evaluation").mkdir()
    (run / "evaluation" / ".results.json.k1ll3d").write_text("{")
    extended = rdd_plugins.distill(out=run, resume=True, progress=False, overrides={"distill": {"iterations": 3}})
    assert extended.meta["completed_iterations"] == 3
