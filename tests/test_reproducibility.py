import torch

import rdd_plugins
from rdd_plugins.evaluation.metrics import without_timings


def test_same_seed_gives_identical_images_on_cpu(make_config):
    cfg = make_config(regularizer="curvature", regularizer_params={"h": 0.3, "lam": 2.0})
    a = rdd_plugins.distill(cfg, progress=False)
    b = rdd_plugins.distill(cfg, progress=False)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    cfg["seed"] = 1
    c = rdd_plugins.distill(cfg, progress=False)
    assert not torch.equal(a.images, c.images)


def test_distillation_moves_the_images_and_keeps_them_in_range(make_config):
    cfg = make_config()
    start = rdd_plugins.distill({**cfg, "distill": {**cfg["distill"], "iterations": 1}}, progress=False)
    end = rdd_plugins.distill(cfg, progress=False)
    assert not torch.equal(start.images, end.images)
    assert float(end.images.min()) >= 0.0 and float(end.images.max()) <= 1.0
    assert end.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_same_seed_gives_identical_evaluation(make_config, tmp_path):
    cfg = make_config()
    ds = rdd_plugins.distill(cfg, progress=False)
    (r1,) = rdd_plugins.evaluate(ds, progress=False)
    (r2,) = rdd_plugins.evaluate(ds, progress=False)
    assert without_timings(r1["per_seed"]) == without_timings(r2["per_seed"])
    assert r1["per_seed"][0]["attacks"]["pgd"]  # the comparison covers the attack results
