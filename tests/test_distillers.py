"""dm, random and herding on generated data: they run, improve what they optimise, stay in range."""

import copy
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


def test_dm_augments_as_dm_does_unless_told_not_to(make_config, monkeypatch):
    from rdd_plugins.builtin.distillers.dsa import SiameseAugment

    plain = rdd_plugins.distill(make_config(distiller="dm", params={"batch_real": 16, "strategy": "none"}),
                                progress=False)
    shapes = []
    per_class = SiameseAugment.per_class

    def recording(self, real, syn, mean, std, generators=None):
        shapes.append((tuple(real.shape), tuple(syn.shape)))
        return per_class(self, real, syn, mean, std, generators)

    monkeypatch.setattr(SiameseAugment, "per_class", recording)
    augmented = rdd_plugins.distill(make_config(distiller="dm", params={"batch_real": 16}), progress=False)
    # every iteration augments every class's real and synthetic batch, and that changes the images
    assert shapes == [((4, 16, 1, 8, 8), (4, 2, 1, 8, 8))] * 3
    assert not torch.equal(plain.images, augmented.images)
    with pytest.raises(rdd_plugins.RddError, match="dm: unknown transforms"):
        rdd_plugins.get_registry().create("distillers", "dm", strategy="color_warp")


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
    image = torch.rand(1, 1, 8, 8)
    real = image.expand(6, 1, 8, 8).clone()
    syn = image.expand(3, 1, 8, 8).clone().requires_grad_(True)
    mean, std = torch.tensor(0.5).view(1, 1, 1, 1), torch.tensor(0.25).view(1, 1, 1, 1)
    real_out, syn_out = aug(real, syn, mean, std)
    # one parameter draw for every image of both batches (DSA's Siamese mode): equal images stay equal
    torch.testing.assert_close(real_out, real_out[:1].expand_as(real_out))
    torch.testing.assert_close(syn_out.detach(), real_out[:3])
    assert not torch.allclose(real_out, real) or transform == "flip"
    (g,) = torch.autograd.grad(syn_out.sum(), syn)
    assert g.abs().sum() > 0


def test_dsa_inner_loop_augments_each_image_on_its_own():
    from rdd_plugins.builtin.distillers.dsa import SiameseAugment

    torch.manual_seed(0)
    x = torch.rand(1, 1, 8, 8).expand(6, 1, 8, 8)
    mean, std = torch.tensor(0.5).view(1, 1, 1, 1), torch.tensor(0.25).view(1, 1, 1, 1)
    out = SiameseAugment("scale").apply([x], mean, std, siamese=False)[0]
    assert not torch.allclose(out[0], out[1])


def test_dsa_cutout_cuts_a_square_of_dsas_size():
    aug = _augment()  # ratio 0.5: a 4 x 4 square on 8 x 8 images, centre at (cy, cx)
    x = torch.ones(2, 1, 8, 8)
    out = aug._apply_cutout(x, {"cy": torch.tensor([4, 0]), "cx": torch.tensor([4, 8])})
    assert int((out[0] == 0).sum()) == 16 and out[0, 0, 2:6, 2:6].eq(0).all()
    assert int((out[1] == 0).sum()) == 4 and out[1, 0, :2, 6:].eq(0).all()  # clipped at the corner


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
    outs = [random_resized_crop(images, 0.25, torch.Generator().manual_seed(s)) for s in range(6)]
    assert all(o.shape == images.shape for o in outs)
    assert any(not torch.equal(o, images) for o in outs)  # the crops move pixels
    (g,) = torch.autograd.grad(sum(o.sum() for o in outs), images)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    torch.manual_seed(3)
    # from its generator only: the same crop whatever torch's global stream (a resumed run, another rank)
    assert torch.equal(random_resized_crop(images, 0.25, torch.Generator().manual_seed(0)), outs[0])
    # scale 1: the whole image, maybe flipped
    full = random_resized_crop(images, 1.0, torch.Generator().manual_seed(1)).detach()
    assert torch.equal(full, images.detach()) or torch.equal(full, images.detach().flip(-1))
    with pytest.raises(rdd_plugins.RddError, match="crop_min_scale"):
        rdd_plugins.distill(make_config(distiller="sre2l", params={"crop_min_scale": 2.0}), progress=False)


def _sre2l_context(make_config, regularizer="none"):
    """A DistillContext for calling sre2l's pieces directly."""
    from rdd_plugins.distillation.contract import DistillContext

    registry = rdd_plugins.get_registry()
    cfg = make_config()
    train = registry.create("datasets", "synthetic", None, "train", **cfg["data"]["params"])

    def make_model():
        torch.manual_seed(0)
        return registry.create("backbones", "convnet", 1, 4, 8, train.mean, train.std, width=8, depth=2,
                               norm="batch")

    return DistillContext(train=train, ipc=2, iterations=3, make_model=make_model,
                          regularizer=registry.create("regularizers", regularizer), device=torch.device("cpu"),
                          progress=False)


def test_sre2l_squeeze_is_ordinary_training_with_batch_statistics(make_config):
    # With no regularizer, squeeze must be the textbook loop: train mode (batch statistics in the
    # loss and its gradient), SGD with momentum, the running statistics updated once per batch.
    context = _sre2l_context(make_config)
    distiller = rdd_plugins.get_registry().create("distillers", "sre2l", teacher_epochs=1, batch_size=32)
    ours = context.make_model()
    distiller._squeeze(ours, context)

    reference = context.make_model().train()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    order = torch.randperm(context.train.images.shape[0], generator=context.generator("squeeze", 0))
    for start in range(0, order.numel(), 32):
        idx = order[start:start + 32]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(reference(context.train.images[idx]), context.train.labels[idx]).backward()
        optimizer.step()
    for (name, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_sre2l_squeeze_regularizer_passes_leave_the_running_statistics_alone(make_config):
    # curvature runs the teacher at x and at x + z: only the clean batch may move the statistics
    # (a guard on the buffer copies that let the regularizer run the teacher in train mode)
    context = _sre2l_context(make_config, "curvature")
    distiller = rdd_plugins.get_registry().create("distillers", "sre2l", teacher_epochs=1, batch_size=96)
    teacher = context.make_model()
    distiller._squeeze(teacher, context)
    bn = next(m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 1  # 96 images in one batch: one update, not three


def test_sre2l_recover_keeps_every_pixel_movable(make_config):
    # The latent stays inside the [0, 1] box (projected after each step, as SRe2L clips), so no
    # pixel sits behind a clamp with a zero gradient that Adam would never move again.
    from rdd_plugins.builtin.distillers.common import dataset_stats

    context = _sre2l_context(make_config)
    context.real_batch = None
    distiller = rdd_plugins.get_registry().create("distillers", "sre2l", teacher_epochs=1, batch_size=32,
                                                  relabel_crops=0)
    torch.manual_seed(0)
    state = distiller.init(context)
    mean, std = dataset_stats(context)
    low, high = -mean / std, (1 - mean) / std
    for _ in range(3):
        assert ((state["latent"] >= low - 1e-6) & (state["latent"] <= high + 1e-6)).all()
        before = state["latent"].clone()
        distiller.step(state, context)
        # Adam's first steps move every pixel the gradient reaches by about lr; only pixels on
        # the box whose step points outwards stay put
        on_box = (before <= low + 1e-6) | (before >= high - 1e-6)
        assert (state["latent"] != before)[~on_box].float().mean() > 0.95


@pytest.mark.parametrize("distiller", ["gm", "dsa"])
def test_regularize_inner_trains_the_inner_network_with_the_regularizer(make_config, monkeypatch, distiller):
    from rdd_plugins.builtin import regularizers

    def run(regularizer, inner, **reg_params):
        cfg = make_config(distiller=distiller, regularizer=regularizer, regularizer_params=reg_params)
        cfg["distill"]["params"]["regularize_inner"] = inner
        return rdd_plugins.distill(cfg, progress=False).images

    # with no regularizer the option is plain cross-entropy training by another route
    torch.testing.assert_close(run("none", True), run("none", False), rtol=1e-5, atol=1e-6)
    calls = []
    original = regularizers.Curvature.parameter_gradient
    monkeypatch.setattr(regularizers.Curvature, "parameter_gradient",
                        lambda self, *a: calls.append(a[2].shape[0]) or original(self, *a))
    plain = run("curvature", False, h=0.5, lam=1.0)
    assert calls.count(8) == 0  # matching sees real batches of 16 (and 2 in the start-up check)
    regularized = run("curvature", True, h=0.5, lam=1.0)
    # 3 iterations x (outer 2 - 1) inner loops x 2 epochs x 1 minibatch: the whole set of 8 images
    assert calls.count(8) == 3 * 1 * 2
    assert not torch.equal(plain, regularized)
    with pytest.raises(rdd_plugins.RddError, match="regularize_inner must be true or false"):
        rdd_plugins.get_registry().create("distillers", distiller, regularize_inner="yes")


def _guard_squeeze_gradient(teacher, images, labels, h, lam):
    """GUARD's released squeeze step written out with nn.Module modes: cross-entropy in train mode,
    then z, ℓ(x) and ℓ(x + z) in eval mode (running statistics), curvature's absolute form."""
    teacher.train()
    loss = torch.nn.functional.cross_entropy(teacher(images), labels)
    teacher.eval()
    x = images.clone().requires_grad_(True)
    (g_x,) = torch.autograd.grad(torch.nn.functional.cross_entropy(teacher(x), labels), x)
    z = h * g_x / g_x.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    penalty = lam * (torch.nn.functional.cross_entropy(teacher(images + z), labels)
                     - torch.nn.functional.cross_entropy(teacher(images), labels)).abs()
    teacher.train()
    params = [p for p in teacher.parameters()]
    return torch.autograd.grad(loss + penalty, params)


@pytest.mark.parametrize("statistics", ["running", "batch"])
def test_sre2l_squeeze_regularizer_statistics(make_config, statistics):
    # GUARD computes its curvature term with the teacher in eval mode; "batch" keeps every pass in
    # train mode. Running statistics far from the batch's make the two differ measurably.
    context = _sre2l_context(make_config, "curvature")
    distiller = rdd_plugins.get_registry().create("distillers", "sre2l", teacher_epochs=1, batch_size=32,
                                                  regularizer_statistics=statistics)
    teacher = context.make_model()
    for bn in (m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.fill_(0.3)
        bn.running_var.fill_(2.0)
    params = dict(teacher.named_parameters())
    idx = torch.arange(32)
    ours = distiller._teacher_gradient(teacher, params, [idx], context, (0, 0))
    images, labels = context.train.images[idx], context.train.labels[idx]
    reg = context.regularizer
    guard = _guard_squeeze_gradient(copy.deepcopy(teacher), images, labels, reg.h, reg.lam)
    guard = dict(zip(params, guard))
    close = [torch.allclose(ours[name], guard[name], atol=1e-5) for name in params]
    assert all(close) if statistics == "running" else not all(close)
    bn = next(m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert float(bn.running_mean.mean()) == pytest.approx(0.3)  # the passes leave the teacher's own alone


def test_sre2l_regularizer_statistics_is_checked():
    with pytest.raises(rdd_plugins.RddError, match="regularizer_statistics"):
        rdd_plugins.get_registry().create("distillers", "sre2l", regularizer_statistics="eval")
