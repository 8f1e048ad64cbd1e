"""Every regularizer against an independent plain-autograd computation written from its formula."""

import pytest
import torch
import torch.nn.functional as F

import rdd_plugins
from rdd_plugins.builtin.backbones import convnet
from rdd_plugins.builtin.regularizers import Adversarial
from rdd_plugins.distillation.autodiff import grad
from rdd_plugins.distillation.matching import make_loss_fn, real_class_gradients, trainable_params


def tiny_model():
    torch.manual_seed(0)
    return convnet(1, 3, 8, (0.5,), (0.25,), width=4, depth=2)


def batch(k=2, b=4):
    torch.manual_seed(1)
    x = torch.rand(k, b, 1, 8, 8) * 0.8 + 0.1
    y = torch.arange(k).view(k, 1).expand(k, b).contiguous()
    return x, y


def unit(g):
    return torch.stack([v / v.norm() for v in g])


def reference_cure(model, x, y, h, lam):
    x0 = x.clone().requires_grad_(True)
    (g_x,) = torch.autograd.grad(F.cross_entropy(model(x0), y), x0)
    z = h * unit(g_x)
    xr = x.clone().requires_grad_(True)
    diff = F.cross_entropy(model(xr + z), y, reduction="sum") - F.cross_entropy(model(xr), y, reduction="sum")
    (g_diff,) = torch.autograd.grad(diff, xr, create_graph=True)
    total = F.cross_entropy(model(x), y) + lam * g_diff.flatten(1).norm(dim=1).mean()
    return torch.autograd.grad(total, list(model.parameters()))


def reference_gradient_norm(model, x, y, lam):
    xr = x.clone().requires_grad_(True)
    (g_x,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr, create_graph=True)
    total = F.cross_entropy(model(x), y) + lam * g_x.flatten(1).pow(2).sum(1).mean()
    return torch.autograd.grad(total, list(model.parameters()))


def reference_pgd(model, x, y, eps, steps, alpha):
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    return torch.autograd.grad(F.cross_entropy(model(x_adv), y), list(model.parameters()))


CASES = [
    ("cure", {"h": 0.5, "lam": 2.0}, lambda m, x, y: reference_cure(m, x, y, 0.5, 2.0)),
    ("gradient-norm", {"lam": 3.0}, lambda m, x, y: reference_gradient_norm(m, x, y, 3.0)),
    ("adversarial", {"eps": 8 / 255, "steps": 3, "random_start": False},
     lambda m, x, y: reference_pgd(m, x, y, 8 / 255, 3, 2 / 255)),
]


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("name, params, reference", CASES, ids=[c[0] for c in CASES])
def test_regularizer_matches_independent_autograd(name, params, reference, batched):
    model = tiny_model()
    x, y = batch()
    reg = rdd_plugins.get_registry().create("regularizers", name, **params)
    got = real_class_gradients(reg, make_loss_fn(model), trainable_params(model), x, y, batched)
    names = [n for n, _ in model.named_parameters()]
    for k in range(x.shape[0]):
        for n, w in zip(names, reference(model, x[k], y[k])):
            torch.testing.assert_close(got[n][k], w, rtol=1e-4, atol=1e-6)


def test_regularizers_change_the_target_and_zero_strength_does_not():
    model = tiny_model()
    x, y = batch()
    args = (make_loss_fn(model), trainable_params(model), x, y, False)
    reg = rdd_plugins.get_registry()
    plain = real_class_gradients(reg.create("regularizers", "none"), *args)["1.weight"]
    for name in ("cure", "gradient-norm"):
        assert not torch.allclose(real_class_gradients(reg.create("regularizers", name, lam=5.0), *args)["1.weight"],
                                  plain, atol=1e-5)
        torch.testing.assert_close(real_class_gradients(reg.create("regularizers", name, lam=0.0), *args)["1.weight"],
                                   plain)


def test_adversarial_random_start_draws_fresh_noise_per_call():
    model = tiny_model()
    x, y = batch()
    reg = rdd_plugins.get_registry().create("regularizers", "adversarial", eps=0.1, steps=1)
    args = (make_loss_fn(model), trainable_params(model), x, y, True)
    a = real_class_gradients(reg, *args)["1.weight"]
    b = real_class_gradients(reg, *args)["1.weight"]
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name, params", [("cure", {"h": -1}), ("gradient-norm", {"lam": -1}),
                                          ("adversarial", {"eps": 8}), ("curvature", {"form": "squared"})])
def test_bad_regularizer_parameters_are_one_line_errors(name, params):
    with pytest.raises(rdd_plugins.RddError):
        rdd_plugins.get_registry().create("regularizers", name, **params)


class RecordingLoss:
    """The model's loss, keeping every input it is called with (PGD's iterates and final point)."""

    def __init__(self, model):
        self.loss_fn, self.inputs = make_loss_fn(model), []

    def __call__(self, params, images, labels):
        self.inputs.append(images.detach().clone())
        return self.loss_fn(params, images, labels)


class ClampToUnitBoxAdversarial(Adversarial):
    """``adversarial`` before issue #18: PGD clamped to [0, 1] whatever the input's range."""

    def parameter_gradient(self, loss_fn, params, images, labels):
        x_adv = images
        if self.random_start:
            x_adv = (images + torch.empty_like(images).uniform_(-self.eps, self.eps)).clamp(0, 1)
        input_grad = grad(loss_fn, argnums=1)
        for _ in range(self.steps):
            step = self.alpha * input_grad(params, x_adv, labels).sign()
            x_adv = torch.min(torch.max(x_adv + step, images - self.eps), images + self.eps).clamp(0, 1)
        return grad(loss_fn)(params, x_adv, labels)


def test_adversarial_examples_stay_in_the_eps_ball_of_inputs_beyond_the_unit_box():
    # DSA's colour augmentation takes real images beyond [0, 1]; PGD must still stay within eps
    model = tiny_model()
    torch.manual_seed(1)
    x = torch.rand(6, 1, 8, 8) * 1.5 - 0.2  # [-0.2, 1.3]
    y = torch.arange(6) % 3
    eps = 8 / 255
    reg = rdd_plugins.get_registry().create("regularizers", "adversarial", eps=eps, steps=4)
    loss = RecordingLoss(model)
    torch.manual_seed(2)
    reg.parameter_gradient(loss, trainable_params(model), x, y)
    assert len(loss.inputs) == 5
    low = x.amin(dim=(1, 2, 3), keepdim=True).clamp(max=0)
    high = x.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1)
    for x_adv in loss.inputs:
        assert (x_adv - x).abs().max() <= eps + 1e-6
        assert ((x_adv >= low) & (x_adv <= high)).all()
    assert not torch.equal(loss.inputs[-1], x)


def test_adversarial_inside_the_unit_box_is_unchanged_by_the_widened_box():
    model = tiny_model()
    x, y = batch()
    x, y = x[0], y[0]
    x[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 0.01])  # pixels on and near the box's faces
    params = trainable_params(model)
    for random_start in (True, False):
        ours = rdd_plugins.get_registry().create("regularizers", "adversarial", eps=0.05, steps=3,
                                                 random_start=random_start)
        before = ClampToUnitBoxAdversarial(eps=0.05, steps=3, random_start=random_start)
        results = []
        for reg in (ours, before):
            loss = RecordingLoss(model)
            torch.manual_seed(3)
            results.append((reg.parameter_gradient(loss, params, x, y), loss.inputs))
        (got, got_inputs), (want, want_inputs) = results
        assert all(torch.equal(a, b) for a, b in zip(got_inputs, want_inputs)) and len(got_inputs) == 4
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_adversarial_beyond_the_unit_box_is_the_same_under_vmap():
    model = tiny_model()
    x, y = batch()
    x = x * 1.5 - 0.2
    reg = rdd_plugins.get_registry().create("regularizers", "adversarial", eps=8 / 255, steps=2, random_start=False)
    args = (make_loss_fn(model), trainable_params(model), x, y)
    looped, batched = real_class_gradients(reg, *args, False), real_class_gradients(reg, *args, True)
    for name in looped:
        torch.testing.assert_close(batched[name], looped[name], rtol=1e-4, atol=1e-6)
