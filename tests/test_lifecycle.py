"""Lifecycle hooks: step views, early stop, finished notifications, failing plugins reported."""

import json

import pytest
import torch

import rdd_plugins
from rdd_plugins import hookimpl, plugins


class Recorder:
    def __init__(self, stop_at=None):
        self.steps, self.finished, self.reports, self.stop_at = [], [], [], stop_at

    @hookimpl
    def rdd_distill_step(self, step):
        images, labels = step.images()
        self.steps.append((step.iteration, step.iterations, dict(step.losses), tuple(images.shape)))
        return step.iteration == self.stop_at or None

    @hookimpl
    def rdd_distill_finished(self, result):
        self.finished.append(result)

    @hookimpl
    def rdd_evaluation_finished(self, report):
        self.reports.append(report)


@pytest.fixture
def recorder():
    rec = Recorder()
    plugins.register_plugin(rec, name="recorder")
    yield rec
    plugins.unregister_plugin("recorder")


def test_step_views_and_finished_notifications(recorder, make_config):
    ds = rdd_plugins.distill(make_config(iterations=3), progress=False)
    assert [s[0] for s in recorder.steps] == [1, 2, 3] and all(s[1] == 3 for s in recorder.steps)
    assert all("match_loss" in s[2] and s[3] == (8, 1, 8, 8) for s in recorder.steps)
    assert recorder.finished == [ds] and ds.meta["stopped_early"] is False
    rows = rdd_plugins.evaluate(ds, progress=False)
    assert recorder.reports == rows and len(rows) == 1


def test_a_plugin_can_stop_the_run_early(recorder, make_config, tmp_path):
    recorder.stop_at = 2
    ds = rdd_plugins.distill(make_config(iterations=6), out=tmp_path, progress=False)
    assert [s[0] for s in recorder.steps] == [1, 2]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["stopped_early"] is True and meta["completed_iterations"] == 2
    assert torch.equal(rdd_plugins.load_distilled(tmp_path).images, ds.images)


class Failing:
    @hookimpl
    def rdd_distill_step(self, step):
        raise ValueError("logger is down")


def test_a_failing_lifecycle_hook_is_reported_with_its_name_and_the_run_goes_on(make_config, capsys, monkeypatch):
    plugins.register_plugin(Failing(), name="flaky-logger")
    ds = rdd_plugins.distill(make_config(iterations=2), progress=False)
    assert ds.meta["completed_iterations"] == 2
    err = capsys.readouterr().err
    assert err.count("plugin 'flaky-logger' failed in rdd_distill_step: ValueError: logger is down") == 2
    monkeypatch.setenv("RDD_STRICT_PLUGINS", "1")
    with pytest.raises(rdd_plugins.RddError, match="flaky-logger"):
        rdd_plugins.distill(make_config(iterations=2), progress=False)


def test_looking_at_the_images_does_not_change_the_run(make_config):
    """A plugin calling step.images() runs under a forked RNG: sre2l with recover crops (which draw
    from torch's generator every step) ends the same whether or not someone looked."""
    cfg = make_config(distiller="sre2l", iterations=4,
                      params={"teacher_epochs": 1, "batch_size": 32, "crop_min_scale": 0.5, "relabel_crops": 2})
    cfg["backbone"]["params"]["norm"] = "batch"
    unwatched = rdd_plugins.distill(cfg, progress=False)
    rec = Recorder()
    plugins.register_plugin(rec, name="recorder")
    try:
        watched = rdd_plugins.distill(cfg, progress=False)
    finally:
        plugins.unregister_plugin("recorder")
    assert [s[3] for s in rec.steps] == [(8, 1, 8, 8)] * 4
    assert torch.equal(watched.images, unwatched.images)
    assert torch.equal(watched.soft_labels, unwatched.soft_labels)


class RandomLogger:
    """A plugin that draws from torch's global generator in every step (a sampler, a logger)."""

    @rdd_plugins.hookimpl
    def rdd_distill_step(self, step):
        torch.rand(100)


def test_a_plugin_drawing_random_numbers_does_not_change_the_run(make_config):
    # The checkpoint holds the stream as it was before the hooks ran; were they not forked, a
    # resumed run would see another stream than the one it continues.
    cfg = make_config(iterations=3)
    unwatched = rdd_plugins.distill(cfg, progress=False)
    plugins.register_plugin(RandomLogger(), name="random-logger")
    try:
        watched = rdd_plugins.distill(cfg, progress=False)
    finally:
        plugins.unregister_plugin("random-logger")
    assert torch.equal(watched.images, unwatched.images)
