"""dm, random and herding on generated data: they run, improve what they optimise, stay in range."""

import json

import torch

import rdd_plugins
from rdd_plugins.builtin.distillers.subsets import herding_indices


def test_dm_lowers_its_loss_and_keeps_images_in_range(make_config, tmp_path):
    cfg = make_config(distiller="dm", iterations=12, params={"batch_real": 16, "init": "noise"})
    ds = rdd_plugins.distill(cfg, out=tmp_path, progress=False)
    losses = [h["dm_loss"] for h in json.loads((tmp_path / "history.json").read_text())["history"]]
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3]), losses
    assert ds.images.shape == (8, 1, 8, 8) and 0 <= float(ds.images.min()) and float(ds.images.max()) <= 1


def test_herding_indices_follow_the_mean():
    features = torch.tensor([[0.0, 0.0], [10.0, 0.0], [1.0, 1.0], [-1.0, -1.0], [0.0, 10.0]])
    # mean (2, 2): first the closest point (1, 1); then the pair whose average stays nearest.
    picks = herding_indices(features, 3).tolist()
    assert picks[0] == 2 and len(set(picks)) == 3
    running = features[picks[:2]].mean(0)
    best = min(((features[[2, j]].mean(0) - features.mean(0)).norm().item(), j) for j in range(5) if j != 2)
    assert picks[1] == best[1] and (running - features.mean(0)).norm().item() == best[0]


def test_subset_baselines_pick_real_training_images_of_the_right_class(make_config):
    cfg = make_config()
    train = rdd_plugins.get_registry().create("datasets", "synthetic", None, "train", **cfg["data"]["params"])
    for name, params in (("random", {}), ("herding", {"feature_epochs": 1})):
        c = make_config(distiller=name, params=params)
        ds = rdd_plugins.distill(c, progress=False)
        assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3], name
        for image, label in zip(ds.images, ds.labels):
            match = (train.images == image).flatten(1).all(1)
            assert match.any() and train.labels[match][0] == label, name
