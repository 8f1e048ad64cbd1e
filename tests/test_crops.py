"""Crop views for per-crop relabelling: sampled inside the image, applied identically everywhere."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rdd_plugins.crops import apply_crop_boxes, check_crop_boxes, sample_crop_boxes
from rdd_plugins.evaluation.train import train_model


def boxes_of(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_sampled_boxes_lie_inside_cover_at_least_min_scale_and_repeat_with_the_seed():
    boxes = sample_crop_boxes(50, 7, 0.3, (8, 12), torch.Generator().manual_seed(1))
    assert boxes.shape == (50, 7, 5) and check_crop_boxes(boxes) is None
    area = boxes[..., 2] * boxes[..., 3]
    # at least the min scale up to rounding to whole pixels (half a pixel per side), as torchvision
    assert (area >= 0.3 - (8 + 12 + 1) / (2 * 96)).all() and (area < 0.99).any()
    pixels = boxes[..., :4] * torch.tensor([8.0, 12.0, 8.0, 12.0])  # top, left, height, width
    assert torch.allclose(pixels, torch.round(pixels), atol=1e-4)
    assert 0.3 < boxes[..., 4].mean() < 0.7  # about half flipped
    again = sample_crop_boxes(50, 7, 0.3, (8, 12), torch.Generator().manual_seed(1))
    assert torch.equal(boxes, again)
    assert not torch.equal(boxes, sample_crop_boxes(50, 7, 0.3, (8, 12), torch.Generator().manual_seed(2)))


def test_boxes_follow_torchvisions_random_resized_crop():
    from torchvision.transforms import RandomResizedCrop

    size = (28, 28)
    ours = sample_crop_boxes(500, 20, 0.08, size, torch.Generator().manual_seed(0)).view(-1, 5).double()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, *size), [0.08, 1.0], [3 / 4, 4 / 3])
                               for _ in range(10000)], dtype=torch.float64) / 28
    # pixel-aligned like torchvision's boxes (i, j, h, w)
    assert torch.allclose(ours[:, :4] * 28, torch.round(ours[:, :4] * 28), atol=1e-4)
    for column in range(4):
        assert abs(ours[:, column].mean() - theirs[:, column].mean()) < 0.01, column
        assert abs(ours[:, column].std() - theirs[:, column].std()) < 0.01, column
    area, their_area = ours[:, 2] * ours[:, 3], theirs[:, 2] * theirs[:, 3]
    assert abs(area.mean() - their_area.mean()) < 0.01
    # the whole image about as rarely as torchvision gives it (the one-draw sampler: 14 %)
    whole = (area > 0.999).double().mean()
    assert abs(whole - (their_area > 0.999).double().mean()) < 0.01


def test_a_box_that_never_fits_falls_back_to_the_central_crop_at_the_nearest_ratio():
    boxes = sample_crop_boxes(4, 3, 0.99, (8, 40), torch.Generator().manual_seed(0))
    # torchvision: h = 8, w = round(8 * 4/3) = 11, left = (40 - 11) // 2 = 14
    expected = torch.tensor([0.0, 14 / 40, 1.0, 11 / 40])
    assert torch.allclose(boxes[..., :4], expected.expand(4, 3, 4), atol=1e-6)


def test_whole_image_box_is_the_image_and_flip_mirrors_it():
    images = torch.rand(3, 2, 6, 6)
    whole = apply_crop_boxes(images, boxes_of(*[[0, 0, 1, 1, 0]] * 3))
    assert torch.allclose(whole, images, atol=1e-6)
    mirrored = apply_crop_boxes(images, boxes_of(*[[0, 0, 1, 1, 1]] * 3))
    assert torch.allclose(mirrored, images.flip(-1), atol=1e-6)


def test_a_box_is_its_region_resized_back_bilinearly():
    images = torch.rand(2, 1, 8, 8, requires_grad=True)
    out = apply_crop_boxes(images, boxes_of([0, 0, 0.5, 0.5, 0], [0.5, 0.25, 0.5, 0.75, 0]))
    expected0 = F.interpolate(images[:1, :, :4, :4], size=(8, 8), mode="bilinear", align_corners=False)
    expected1 = F.interpolate(images[1:, :, 4:, 2:], size=(8, 8), mode="bilinear", align_corners=False)
    # inside the box exactly as crop-then-resize; on its edge the sample may blend in the pixel just
    # outside the box, which crop-then-resize cannot see (it repeats the edge pixel)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert torch.allclose(out[:1][inner], expected0[inner], atol=1e-5)
    assert torch.allclose(out[1:][inner], expected1[inner], atol=1e-5)
    (g,) = torch.autograd.grad(out.sum(), images)
    assert g[0, :, 5:, :].abs().sum() == 0 and g[0, :, :, 5:].abs().sum() == 0  # the box and its rim only
    assert g[0, :, :4, :4].abs().sum() > 0


@pytest.mark.parametrize("bad, message", [
    (boxes_of([0.6, 0, 0.5, 0.5, 0]), "inside the image"),
    (boxes_of([0, 0, 0, 0.5, 0]), "inside the image"),
    (boxes_of([0, 0, 1, 1, 0.5]), "flip"),
    (torch.zeros(2, 4), "shape"),
    (boxes_of([0, 0, float("nan"), 1, 0]), "finite"),
])
def test_bad_boxes_are_named(bad, message):
    assert message in check_crop_boxes(bad)


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 2)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.linear(x.flatten(1))


def test_training_shows_view_e_mod_views_at_epoch_e_with_that_views_label(monkeypatch):
    images = torch.rand(4, 1, 4, 4)
    boxes = boxes_of([0, 0, 1, 1, 0], [0, 0, 1, 1, 1]).expand(4, 2, 5).contiguous()  # view 1: mirrored
    soft = torch.randn(4, 2, 2)
    targets = []
    kl_div = F.kl_div
    monkeypatch.setattr(F, "kl_div", lambda inp, target, **kw: targets.append(target.clone()) or kl_div(inp, target, **kw))
    model = Recorder()
    torch.manual_seed(0)
    train_model(model, images, torch.zeros(4, dtype=torch.long), epochs=3, batch_size=4, progress=False,
                soft_labels=soft, crop_boxes=boxes, temperature=2.0)
    torch.manual_seed(0)
    orders = [torch.randperm(4) for _ in range(3)]
    for epoch, (view, view_images) in enumerate([(0, images), (1, images.flip(-1)), (0, images)]):
        assert torch.allclose(model.seen[epoch], view_images[orders[epoch]], atol=1e-6), epoch
        assert torch.allclose(targets[epoch], F.softmax(soft[orders[epoch], view] / 2.0, dim=1)), epoch


@pytest.mark.parametrize("soft, boxes", [
    (None, boxes_of([0, 0, 1, 1, 0]).expand(4, 2, 5)),  # views without their labels
    (torch.randn(4, 2), boxes_of([0, 0, 1, 1, 0]).expand(4, 2, 5)),  # one label per image, with views
    (torch.randn(4, 3, 2), boxes_of([0, 0, 1, 1, 0]).expand(4, 2, 5)),  # views disagree
    (torch.randn(4, 2, 2), None),  # labels per view, no views
    (torch.randn(4, 0, 2), torch.zeros(4, 0, 5)),  # no views at all
])
def test_training_rejects_labels_and_views_that_do_not_fit(soft, boxes):
    from rdd_plugins.errors import RddError

    with pytest.raises(RddError, match="views"):
        train_model(Recorder(), torch.rand(4, 1, 4, 4), torch.zeros(4, dtype=torch.long), epochs=1,
                    progress=False, soft_labels=soft, crop_boxes=boxes)


def test_identity_views_with_the_image_labels_train_as_per_image_soft_labels():
    torch.manual_seed(0)
    images, labels, soft = torch.rand(6, 1, 4, 4), torch.tensor([0, 1] * 3), torch.randn(6, 2)
    make = lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 2))  # noqa: E731
    torch.manual_seed(1)
    plain = train_model(make(), images, labels, epochs=4, batch_size=4, progress=False, soft_labels=soft)
    torch.manual_seed(1)
    views = train_model(make(), images, labels, epochs=4, batch_size=4, progress=False,
                        soft_labels=soft.unsqueeze(1).expand(6, 3, 2).contiguous(),
                        crop_boxes=boxes_of([0, 0, 1, 1, 0]).expand(6, 3, 5).contiguous())
    for a, b in zip(plain.parameters(), views.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
