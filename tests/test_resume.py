"""Checkpoints and exact resume: a run killed with SIGKILL and resumed ends bit-identical."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import rdd_plugins
from rdd_plugins.checkpoint import CHECKPOINT_FILE, load_checkpoint
from rdd_plugins.errors import RddError

RDD = str(Path(sys.executable).parent / "rdd")
ARGS = ["--dataset", "synthetic", "--ipc", "2", "--regularizer", "curvature", "--iterations", "8", "--seed", "5",
        "--set", 'data.params={num_classes = 3, image_size = 8, per_class = 12}',
        "--set", "backbone.params={width = 4, depth = 2}",
        "--set", "distill.params={batch_real = 8, outer_loop = 3, inner_loop = 2}",
        "--set", "distill.regularizer_params={h = 0.3, lam = 1.0}",
        "--set", "distill.checkpoint_every=1", "--device", "cpu", "--no-progress"]


def checkpoint_iteration(folder: Path) -> int:
    try:
        return load_checkpoint(folder, torch.device("cpu"))[0]
    except RddError:
        return 0


# sre2l with recover crops (a random draw every step) and per-crop relabelling (views from a seed
# kept in the state): the teacher, the draws and the relabelling must all survive the kill.
SRE2L_ARGS = ["--dataset", "synthetic", "--ipc", "2", "--distiller", "sre2l", "--regularizer", "curvature",
              "--iterations", "60", "--seed", "5",
              "--set", 'data.params={num_classes = 3, image_size = 8, per_class = 12}',
              "--set", 'backbone.params={width = 4, depth = 2, norm = "batch"}',
              "--set", "distill.params={teacher_epochs = 1, batch_size = 16, crop_min_scale = 0.5, relabel_crops = 3}",
              "--set", "distill.checkpoint_every=1", "--device", "cpu", "--no-progress"]


@pytest.mark.parametrize("args, kill_after, loss", [(ARGS, 1, "match_loss"), (ARGS, 4, "match_loss"),
                                                    (SRE2L_ARGS, 3, "recover_loss")])
def test_sigkill_then_resume_is_bit_identical(tmp_path, args, kill_after, loss):
    reference = tmp_path / "reference"
    subprocess.run([RDD, "distill", *args, "--out", str(reference)], check=True, capture_output=True, timeout=600)

    run = tmp_path / "killed"
    proc = subprocess.Popen([RDD, "distill", *args, "--out", str(run)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while checkpoint_iteration(run) < kill_after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "meta.json").exists(), "the run finished before it was killed; make it longer"
    reached = checkpoint_iteration(run)
    iterations = int(args[args.index("--iterations") + 1])
    assert 1 <= reached < iterations

    subprocess.run([RDD, "distill", "--resume", str(run), "--no-progress"], check=True, capture_output=True,
                   timeout=600)
    a, b = rdd_plugins.load_distilled(reference), rdd_plugins.load_distilled(run)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    for extra in ("soft_labels", "crop_boxes"):
        x, y = getattr(a, extra), getattr(b, extra)
        assert (x is None and y is None) or torch.equal(x, y), extra
    history = json.loads((run / "history.json").read_text())["history"]
    assert [h["iteration"] for h in history] == list(range(iterations))
    ref_losses = [h[loss] for h in json.loads((reference / "history.json").read_text())["history"]]
    assert [h[loss] for h in history] == ref_losses


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "config.toml").write_text('[data]\ndataset = "synthetic"\n')
    with pytest.raises(RddError, match="no checkpoint"):
        rdd_plugins.distill(out=tmp_path, resume=True, progress=False)


def test_resume_refuses_a_changed_config(tmp_path):
    with pytest.raises(RddError, match="only the device"):
        rdd_plugins.distill(out=tmp_path, resume=True, overrides={"distill": {"ipc": 3}})


class Exploding:
    """A distiller whose images turn NaN after ``at`` iterations."""

    iterations_needed = True

    def __init__(self, at: int = 3):
        self.at = at

    def init(self, context):
        return {"images": torch.full((context.num_classes * context.ipc, 1, 8, 8), 0.5), "steps": 0}

    def step(self, state, context):
        state["steps"] += 1
        if state["steps"] > self.at:
            state["images"] = state["images"] * float("nan")
        return {"loss": 1.0 / state["steps"]}

    def result(self, state, context):
        labels = torch.arange(context.num_classes).repeat_interleave(context.ipc)
        return state["images"].clamp(0, 1), labels


@pytest.mark.parametrize("every, kept", [(1, 3), (2, 2)])
def test_non_finite_state_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, make_config, every, kept):
    class Plugin:
        @rdd_plugins.hookimpl
        def rdd_register_distillers(self, register):
            register("exploding", Exploding)

    rdd_plugins.plugins.register_plugin(Plugin(), name="exploding")
    try:
        cfg = make_config(iterations=6, checkpoint_every=every, distiller="exploding", params={})
        with pytest.raises(RddError, match="iteration 3: non-finite state images") as err:
            rdd_plugins.distill(cfg, out=tmp_path, progress=False)
        # the message names the iteration the checkpoint on disk holds, not the last one finished
        assert f"last good checkpoint (iteration {kept})" in str(err.value) and "\n" not in str(err.value)
        iteration, state, history, _ = load_checkpoint(tmp_path, torch.device("cpu"))
        assert iteration == kept and state["steps"] == kept and len(history) == kept
        assert torch.isfinite(state["images"]).all()
    finally:
        rdd_plugins.plugins.unregister_plugin("exploding")


def test_resume_refuses_a_checkpoint_of_another_config_and_fresh_runs_replace_it(tmp_path, make_config):
    cfg = make_config(iterations=2, checkpoint_every=1)
    rdd_plugins.distill(cfg, out=tmp_path, progress=False)
    other = make_config(iterations=2, checkpoint_every=0, ipc=3)
    rdd_plugins.distill(other, out=tmp_path, progress=False, overwrite=True)
    assert not (tmp_path / CHECKPOINT_FILE).exists()  # the fresh run removed the stale checkpoint

    rdd_plugins.distill(make_config(iterations=2, checkpoint_every=1), out=tmp_path, progress=False, overwrite=True)
    (tmp_path / "config.toml").write_text((tmp_path / "config.toml").read_text().replace("ipc = 2", "ipc = 3"))
    with pytest.raises(RddError, match="another config"):
        rdd_plugins.distill(out=tmp_path, resume=True, progress=False)


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path, make_config):
    rdd_plugins.distill(make_config(iterations=2, checkpoint_every=1), out=tmp_path, progress=False)
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"garbage")
    with pytest.raises(RddError, match="not a readable checkpoint"):
        rdd_plugins.distill(out=tmp_path, resume=True, progress=False)


def test_a_checkpoint_from_before_keyed_draws_is_refused(tmp_path, make_config):
    from safetensors import safe_open
    from safetensors.torch import save_file

    cfg = make_config()
    cfg["distill"]["checkpoint_every"] = 1
    rdd_plugins.distill(cfg, out=tmp_path / "run", progress=False, overrides={"distill": {"iterations": 2}})
    path = tmp_path / "run" / "checkpoint.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    record = json.loads(meta["json"])
    del record["draws"]  # what an rdd of the global random stream wrote
    save_file(tensors, str(path), metadata={**meta, "json": json.dumps(record)})
    with pytest.raises(rdd_plugins.RddError, match="random draws were not keyed by work"):
        rdd_plugins.distill(out=tmp_path / "run", resume=True, progress=False)


def test_a_checkpoint_written_with_or_without_a_key_added_later_resumes(tmp_path):
    # A checkpoint from before a key existed has no such key in its fingerprint; one written while
    # to_dict still listed it at its old value has it. Both describe the same run.
    import json

    from rdd_plugins.checkpoint import _comparable, run_fingerprint
    from rdd_plugins.config import RunConfig
    from rdd_plugins.config.schema import KEYS_ADDED_LATER

    today = run_fingerprint(RunConfig().to_dict())
    with_keys = json.loads(today)
    for (section, key), old in KEYS_ADDED_LATER.items():
        with_keys[section][key] = old
    assert _comparable(json.dumps(with_keys, sort_keys=True)) == today
    assert run_fingerprint(with_keys) == today
    with_keys["evaluate"]["augment"] = "dsa"  # another value is another run
    assert _comparable(json.dumps(with_keys, sort_keys=True)) != today


def _edit_checkpoint_record(folder: Path, edit) -> None:
    """Rewrite the JSON record of the checkpoint in ``folder`` through ``edit`` (record -> None)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = folder / CHECKPOINT_FILE
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    record = json.loads(meta["json"])
    edit(record)
    save_file(tensors, str(path), metadata={**meta, "json": json.dumps(record)})


def test_a_resumed_run_reports_the_seconds_of_all_its_legs(tmp_path, make_config):
    from rdd_plugins.checkpoint import checkpoint_seconds

    first = rdd_plugins.distill(make_config(iterations=2, checkpoint_every=1), out=tmp_path, progress=False)
    assert 0 < checkpoint_seconds(tmp_path) <= first.meta["seconds"]
    _edit_checkpoint_record(tmp_path, lambda r: r.update(seconds=1000.0))  # as if the first leg had been slow
    extended = rdd_plugins.distill(out=tmp_path, resume=True, progress=False, overrides={"distill": {"iterations": 3}})
    assert 1000.0 < extended.meta["seconds"] < 1000.0 + 60 and checkpoint_seconds(tmp_path) > 1000.0


def test_a_run_names_its_thread_count_only_when_every_leg_ran_with_it(tmp_path, make_config):
    before = torch.get_num_threads()
    extend = lambda n: rdd_plugins.distill(out=tmp_path, resume=True, progress=False,  # noqa: E731
                                           overrides={"distill": {"iterations": n}})
    try:
        torch.set_num_threads(1)
        assert rdd_plugins.distill(make_config(iterations=2, checkpoint_every=1), out=tmp_path,
                                   progress=False).meta["cpu_threads"] == 1
        assert extend(3).meta["cpu_threads"] == 1
        torch.set_num_threads(2)  # its seconds now mix two paces
        assert extend(4).meta["cpu_threads"] is None
        torch.set_num_threads(1)
        assert extend(5).meta["cpu_threads"] is None  # the mixed legs stay on record
        _edit_checkpoint_record(tmp_path, lambda r: r.pop("cpu_threads"))  # as before thread counts were kept
        assert extend(6).meta["cpu_threads"] is None
    finally:
        torch.set_num_threads(before)
