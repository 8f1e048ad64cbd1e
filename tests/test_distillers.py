"""dm, random and herding on generated data: they run, improve what they optimise, stay in range."""

import json

import pytest
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


def _augment():
    from rdd_plugins.builtin.distillers.dsa import SiameseAugment

    return SiameseAugment()


@pytest.mark.parametrize("transform", ["color", "crop", "cutout", "flip", "scale", "rotate"])
def test_dsa_transforms_are_siamese_and_differentiable(transform):
    from rdd_plugins.builtin.distillers.dsa import SiameseAugment

    aug = SiameseAugment(transform)
    torch.manual_seed(0)
    real = torch.rand(6, 1, 8, 8)
    syn = real[:3].clone().requires_grad_(True)
    mean, std = torch.tensor(0.5).view(1, 1, 1, 1), torch.tensor(0.25).view(1, 1, 1, 1)
    real_out, syn_out = aug(real, syn, mean, std)
    # the same sampled parameters for the real and the synthetic batch, index by index
    torch.testing.assert_close(syn_out.detach(), real_out[:3])
    assert not torch.allclose(real_out, real) or transform == "flip"
    (g,) = torch.autograd.grad(syn_out.sum(), syn)
    assert g.abs().sum() > 0


def test_dsa_crop_is_a_zero_padded_translation():
    aug = _augment()
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = aug._apply_crop(x, {"dy": torch.tensor([1]), "dx": torch.tensor([0])})
    assert out[0, 0, :3].tolist() == x[0, 0, 1:].tolist() and out[0, 0, 3].tolist() == [0, 0, 0, 0]


def test_dsa_distils_on_synthetic(make_config):
    cfg = make_config(distiller="dsa", iterations=3)
    a = rdd_plugins.distill(cfg, progress=False)
    b = rdd_plugins.distill(cfg, progress=False)
    assert torch.equal(a.images, b.images)  # augmentation draws come from the seeded generator
    assert 0 <= float(a.images.min()) and float(a.images.max()) <= 1


def test_unknown_dsa_transform_is_a_clear_error():
    with pytest.raises(rdd_plugins.RddError, match="unknown transforms"):
        rdd_plugins.get_registry().create("distillers", "dsa", strategy="color_warp")


@pytest.mark.parametrize("regularizer, crop", [("none", 0.0), ("curvature", 0.0), ("none", 0.5)])
def test_sre2l_recovers_relabels_and_evaluates_with_kd(make_config, tmp_path, regularizer, crop):
    cfg = make_config(distiller="sre2l", regularizer=regularizer, iterations=8,
                      params={"teacher_epochs": 3, "batch_size": 32, "crop_min_scale": crop, "relabel_crops": 0},
                      regularizer_params={"h": 0.3} if regularizer == "curvature" else {})
    cfg["backbone"]["params"]["norm"] = "batch"
    rdd_plugins.distill(cfg, out=tmp_path, progress=False)
    ds = rdd_plugins.load_distilled(tmp_path)
    assert ds.soft_labels is not None and ds.soft_labels.shape == (8, 4)
    # the teacher's logits favour each image's own class after recovery (chance: 0.25); random crops
    # of 8x8 images make the 8 recover steps noisier
    assert (ds.soft_labels.argmax(1) == ds.labels).float().mean() >= (0.5 if crop else 0.75)
    losses = [h["ce"] for h in json.loads((tmp_path / "history.json").read_text())["history"]]
    assert losses[-1] < losses[0]
    (result,) = rdd_plugins.evaluate(ds, progress=False)
    assert len(result["per_seed"]) == 2 and 0 <= result["summary"]["clean"]["mean"] <= 100


def test_sre2l_per_crop_relabelling_labels_each_view_and_repeats_with_the_seed(make_config, tmp_path):
    cfg = make_config(distiller="sre2l", iterations=8,
                      params={"teacher_epochs": 3, "batch_size": 32, "relabel_crops": 3, "relabel_min_scale": 0.5})
    cfg["backbone"]["params"]["norm"] = "batch"
    rdd_plugins.distill(cfg, out=tmp_path / "a", progress=False)
    ds = rdd_plugins.load_distilled(tmp_path / "a")
    assert ds.soft_labels.shape == (8, 3, 4) and ds.crop_boxes.shape == (8, 3, 5)
    assert not torch.equal(ds.soft_labels[:, 0], ds.soft_labels[:, 1])  # each view has its own label
    # at least the min scale, up to rounding the box to whole pixels of the 8 x 8 images
    assert (ds.crop_boxes[..., 2] * ds.crop_boxes[..., 3] >= 0.5 - (8 + 8 + 1) / (2 * 64)).all()
    # the recovered images without crops are those of a run without per-crop relabelling
    plain = dict(cfg, distill={**cfg["distill"], "params": {"teacher_epochs": 3, "batch_size": 32,
                                                            "relabel_crops": 0}})
    assert torch.equal(rdd_plugins.distill(plain, progress=False).images, ds.images)
    again = rdd_plugins.distill(cfg, progress=False)
    assert torch.equal(again.crop_boxes, ds.crop_boxes) and torch.equal(again.soft_labels, ds.soft_labels)
    (result,) = rdd_plugins.evaluate(ds, progress=False)
    assert 0 <= result["summary"]["clean"]["mean"] <= 100
    with pytest.raises(rdd_plugins.RddError, match="relabel_crops"):
        rdd_plugins.get_registry().create("distillers", "sre2l", relabel_crops=-1)


def test_sre2l_needs_batch_norm(make_config):
    with pytest.raises(rdd_plugins.RddError, match="BatchNorm"):
        rdd_plugins.distill(make_config(distiller="sre2l", params={"teacher_epochs": 1}), progress=False)


def test_sre2l_crop_is_a_differentiable_seeded_resized_crop(make_config):
    from rdd_plugins.builtin.distillers.sre2l import random_resized_crop

    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8).div(128).requires_grad_(True)
    torch.manual_seed(3)
    outs = [random_resized_crop(images, 0.25) for _ in range(6)]
    assert all(o.shape == images.shape for o in outs)
    assert any(not torch.equal(o, images) for o in outs)  # the crops move pixels
    (g,) = torch.autograd.grad(sum(o.sum() for o in outs), images)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    torch.manual_seed(3)
    assert torch.equal(random_resized_crop(images, 0.25), outs[0])  # seeded: a resumed run repeats it
    full = random_resized_crop(images, 1.0).detach()  # scale 1: the whole image, maybe flipped
    assert torch.equal(full, images.detach()) or torch.equal(full, images.detach().flip(-1))
    with pytest.raises(rdd_plugins.RddError, match="crop_min_scale"):
        rdd_plugins.distill(make_config(distiller="sre2l", params={"crop_min_scale": 2.0}), progress=False)
