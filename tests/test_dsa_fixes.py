"""DSA as its reference code resamples, drawn for all classes at once; herding without a host read
per pick (issue #18, items 5 and 10)."""

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import rdd_plugins
from rdd_plugins.builtin.distillers import dsa
from rdd_plugins.builtin.distillers.dsa import SiameseAugment
from rdd_plugins.builtin.distillers.subsets import herding_indices

MEAN, STD = torch.tensor(0.5).view(1, 1, 1, 1), torch.tensor(0.25).view(1, 1, 1, 1)


def dsa_reference_resample(x, theta):
    """DSA's rand_scale / rand_rotate resampling: affine_grid and grid_sample with torch's defaults."""
    with warnings.catch_warnings():  # torch warns that its default changed; DSA's code relies on it
        warnings.simplefilter("ignore", UserWarning)
        return F.grid_sample(x, F.affine_grid(theta, x.shape))


def rotation(angle):
    """DSA's rand_rotate matrix: [[cos, sin(-a), 0], [sin(a), cos, 0]]."""
    zeros = torch.zeros_like(angle)
    return torch.stack([torch.stack([angle.cos(), (-angle).sin(), zeros], 1),
                        torch.stack([angle.sin(), angle.cos(), zeros], 1)], 1)


# Scaling about the centre samples the same points whatever align_corners says, and so does a
# rotation of a square image; a rotation of an oblong one tells the two conventions apart.
OBLONG = (2, 1, 6, 10)


def test_dsa_resamples_with_torchs_default_grid_convention():
    torch.manual_seed(0)
    x = torch.rand(OBLONG)
    theta = rotation(torch.tensor([0.2, -0.15]))
    torch.testing.assert_close(SiameseAugment("rotate")._affine(x, theta), dsa_reference_resample(x, theta))


@pytest.mark.parametrize("shape", [OBLONG, (2, 3, 8, 8)])
def test_dsa_rotate_and_scale_are_dsas(shape):
    torch.manual_seed(0)
    x = torch.rand(shape)
    aug = SiameseAugment()
    angle = torch.tensor([10 / 180 * math.pi, -7 / 180 * math.pi])
    torch.testing.assert_close(aug._apply_rotate(x, {"angle": angle}), dsa_reference_resample(x, rotation(angle)))
    sx, sy, zeros = torch.tensor([0.9, 1.15]), torch.tensor([1.1, 0.85]), torch.zeros(2)
    theta = torch.stack([torch.stack([sx, zeros, zeros], 1), torch.stack([zeros, sy, zeros], 1)], 1)
    torch.testing.assert_close(aug._apply_scale(x, {"sx": sx, "sy": sy}), dsa_reference_resample(x, theta))


def test_a_class_draws_the_same_augmentation_alone_or_among_other_classes():
    # What lets ranks share the classes out: class k's transform and parameters come from its own
    # generator, so augmenting a block of classes gives each class what the whole set gives it.
    classes = 12
    real, syn = torch.rand(classes, 5, 1, 8, 8), torch.rand(classes, 2, 1, 8, 8)

    def generators(ks):
        return [torch.Generator().manual_seed(1000 + k) for k in ks]

    aug = SiameseAugment()
    real_all, syn_all = aug.per_class(real, syn, MEAN, STD, generators(range(classes)))
    for block in (range(0, 5), range(5, 12), range(7, 8)):
        real_part, syn_part = aug.per_class(real[block.start:block.stop], syn[block.start:block.stop], MEAN, STD,
                                            generators(block))
        assert torch.equal(real_part, real_all[block.start:block.stop])
        assert torch.equal(syn_part, syn_all[block.start:block.stop])
    other_real, _ = aug.per_class(real, syn, MEAN, STD, [torch.Generator().manual_seed(k) for k in range(classes)])
    assert not torch.equal(other_real, real_all)  # the generators decide: other seeds, other draws


def test_dsa_per_class_keeps_each_class_its_own_draw_shared_by_real_and_synthetic():
    # four "flip" entries: four groups of classes, so the classes are regrouped and put back
    aug = SiameseAugment("flip_flip_flip_flip")
    torch.manual_seed(1)
    classes = 12
    images = torch.rand(classes, 1, 1, 8, 8)
    real, syn = images.expand(classes, 5, 1, 8, 8), images.expand(classes, 3, 1, 8, 8).clone().requires_grad_(True)
    real_out, syn_out = aug.per_class(real, syn, MEAN, STD)
    flipped = []
    for k in range(classes):
        image = images[k, 0]
        same, mirrored = torch.allclose(real_out[k, 0], image), torch.allclose(real_out[k, 0], image.flip(2))
        assert same or mirrored, k  # class k's output comes from class k's images
        flipped.append(mirrored)
        torch.testing.assert_close(real_out[k], real_out[k, :1].expand_as(real_out[k]))
        torch.testing.assert_close(syn_out[k].detach(), real_out[k, :3])
    assert any(flipped) and not all(flipped)  # each class draws on its own
    (g,) = torch.autograd.grad(syn_out.sum(), syn)
    assert g.abs().sum() > 0


def test_dsa_makes_mean_and_std_once(monkeypatch):
    calls = []
    original = dsa.dataset_stats
    monkeypatch.setattr(dsa, "dataset_stats", lambda context: calls.append(1) or original(context))
    distiller = rdd_plugins.get_registry().create("distillers", "dsa")
    generator = lambda *key: torch.Generator().manual_seed(len(key))  # noqa: E731
    context = SimpleNamespace(train=SimpleNamespace(mean=(0.5,), std=(0.25,)), device=torch.device("cpu"),
                              generator=generator)
    torch.manual_seed(0)
    for i in range(3):
        distiller.train_batch(torch.rand(4, 1, 8, 8), context, key=(i,))
        distiller.prepare_batches(torch.rand(2, 4, 1, 8, 8), torch.rand(2, 1, 1, 8, 8), context, key=(i,),
                                  classes=range(2))
    assert len(calls) == 1
    other = SimpleNamespace(train=SimpleNamespace(mean=(0.2,), std=(0.3,)), device=torch.device("cpu"),
                            generator=generator)
    distiller.train_batch(torch.rand(4, 1, 8, 8), other, key=(0,))  # another dataset: its own statistics
    assert len(calls) == 2


def herding_indices_per_pick_loop(features, count):
    """herding_indices before issue #18: each pick read on the host."""
    mean = features.mean(0)
    running = torch.zeros_like(mean)
    taken = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
    picks = []
    for t in range(count):
        distance = ((running + features) / (t + 1) - mean).norm(dim=1)
        distance[taken] = float("inf")
        i = int(distance.argmin())
        picks.append(i)
        taken[i] = True
        running += features[i]
    return torch.tensor(picks, dtype=torch.long, device=features.device)


@pytest.mark.parametrize("n, dim, count", [(50, 8, 10), (200, 32, 50), (12, 4, 12), (30, 2, 0)])
def test_herding_selects_what_the_per_pick_loop_selected(n, dim, count):
    for seed in range(3):
        torch.manual_seed(seed)
        features = torch.randn(n, dim)
        assert torch.equal(herding_indices(features, count), herding_indices_per_pick_loop(features, count))


def test_herding_reads_no_pick_on_the_host(monkeypatch):
    features = torch.randn(40, 6)

    def refuse(*args, **kwargs):
        raise AssertionError("a pick was read on the host")

    for method in ("__int__", "__index__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, method, refuse)
    picks = herding_indices(features, 10)
    monkeypatch.undo()
    assert picks.tolist() == herding_indices_per_pick_loop(features, 10).tolist()
