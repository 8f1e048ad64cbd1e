import pytest
import torch
import torch.nn.functional as F

import rdd_plugins
from rdd_plugins.builtin.backbones import convnet
from rdd_plugins.builtin.distillers import dc_loops
from rdd_plugins.builtin.regularizers import Curvature, NoRegularizer
from rdd_plugins.distillation.matching import (layerwise_distance, make_loss_fn, real_class_gradients,
                                          synthetic_class_gradients, trainable_params)


def tiny_model(norm="instance"):
    torch.manual_seed(0)
    return convnet(1, 3, 8, (0.5,), (0.25,), width=4, depth=2, norm=norm)


def batch(k=3, b=5):
    torch.manual_seed(1)
    x = torch.rand(k, b, 1, 8, 8)
    y = torch.arange(k).view(k, 1).expand(k, b).contiguous()
    return x, y


def reference_curvature_gradient(model, x, y, h, lam):
    """Plain autograd, written from the formula: ∇θ[ℓ(x) + λ(ℓ(x+z) − ℓ(x))], z = h ĝ, z constant."""
    params = [p for p in model.parameters()]
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (g_x,) = torch.autograd.grad(loss, x, retain_graph=True)
    z = torch.stack([h * g / g.norm() for g in g_x]).detach()
    loss_shift = F.cross_entropy(model(x.detach() + z), y)
    return torch.autograd.grad(loss + lam * (loss_shift - loss), params)


def reference_dc_distance(g_real, g_syn):
    """DC's match_loss 'ours', one class, one layer at a time."""
    total = 0.0
    for a, b in zip(g_real, g_syn):
        if a.dim() == 1:
            continue
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        total += torch.sum(1 - torch.sum(a * b, -1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6))
    return total


@pytest.mark.parametrize("batched", [True, False])
def test_curvature_matches_independent_autograd(batched):
    model = tiny_model()
    x, y = batch()
    reg = Curvature(h=0.7, lam=5.0)
    got = real_class_gradients(reg, make_loss_fn(model), trainable_params(model), x, y, batched)
    names = [n for n, _ in model.named_parameters()]
    for k in range(x.shape[0]):
        want = reference_curvature_gradient(model, x[k], y[k], 0.7, 5.0)
        for name, w in zip(names, want):
            torch.testing.assert_close(got[name][k], w, rtol=1e-4, atol=1e-6)


def test_curvature_is_not_the_plain_gradient_and_lam_zero_is():
    model = tiny_model()
    x, y = batch()
    args = (make_loss_fn(model), trainable_params(model), x, y, False)
    plain = real_class_gradients(NoRegularizer(), *args)
    curved = real_class_gradients(Curvature(h=1.0, lam=10.0), *args)
    zero = real_class_gradients(Curvature(h=1.0, lam=0.0), *args)
    name = "1.weight"
    assert not torch.allclose(plain[name], curved[name], atol=1e-5)
    torch.testing.assert_close(plain[name], zero[name])


def test_absolute_form_equals_difference_when_loss_rises():
    model = tiny_model()
    x, y = batch()
    args = (make_loss_fn(model), trainable_params(model), x, y, False)
    diff = real_class_gradients(Curvature(h=0.5, lam=3.0), *args)
    absolute = real_class_gradients(Curvature(h=0.5, lam=3.0, form="absolute"), *args)
    for name in diff:  # stepping along the input-gradient raises this tiny model's loss
        torch.testing.assert_close(diff[name], absolute[name])


def test_layerwise_distance_matches_dc_formula_and_skips_1d():
    model = tiny_model()
    x, y = batch(k=2)
    params = trainable_params(model)
    lf = make_loss_fn(model)
    real = real_class_gradients(NoRegularizer(), lf, params, x, y, False)
    syn_x = torch.rand(2, 3, 1, 8, 8, requires_grad=True)
    syn = synthetic_class_gradients(lf, params, syn_x, y[:, :3], False)
    got = layerwise_distance(real, syn)
    want = sum(reference_dc_distance([real[n][k] for n in real], [syn[n][k] for n in syn]) for k in range(2))
    torch.testing.assert_close(got, want)
    (grad,) = torch.autograd.grad(got, syn_x)  # differentiable w.r.t. the synthetic images
    assert grad.abs().sum() > 0


def test_vmap_and_loop_give_the_same_synthetic_gradients():
    model = tiny_model()
    x, y = batch()
    lf, params = make_loss_fn(model), trainable_params(model)
    a = synthetic_class_gradients(lf, params, x, y, True)
    b = synthetic_class_gradients(lf, params, x, y, False)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)


def test_dc_loop_table():
    assert dc_loops(1) == (1, 1) and dc_loops(10) == (10, 50) and dc_loops(50) == (50, 10)
    assert dc_loops(15) == (10, 50) and dc_loops(100) == (50, 10)
    assert dc_loops(2) == dc_loops(9) == (10, 50)  # no row in DC; IPC 1's (1, 1) would never train the net


@pytest.mark.parametrize("regularizer", ["none", "curvature"])
def test_gm_lowers_the_matching_loss_on_synthetic(tmp_path, regularizer, make_config):
    # h scaled to the 8x8 test images (an L2 step of 1.0 on 28x28 is ~0.3 on 8x8)
    reg_params = {"h": 0.3, "lam": 1.0} if regularizer == "curvature" else {}
    cfg = make_config(iterations=16, regularizer=regularizer, regularizer_params=reg_params,
                      params={"batch_real": 16, "outer_loop": 4, "inner_loop": 0, "init": "noise"})
    rdd_plugins.distill(cfg, out=tmp_path, progress=False)
    import json

    losses = [h["match_loss"] for h in json.loads((tmp_path / "history.json").read_text())["history"]]
    assert len(losses) == 16
    assert sum(losses[-4:]) < 0.9 * sum(losses[:4]), losses


def test_batch_norm_backbone_distills(make_config):
    cfg = make_config(iterations=2)
    cfg["backbone"]["params"]["norm"] = "batch"
    result = rdd_plugins.distill(cfg, progress=False)
    assert result.images.shape == (8, 1, 8, 8)
    assert 0.0 <= float(result.images.min()) and float(result.images.max()) <= 1.0


def test_absolute_form_flips_the_penalty_where_the_loss_falls():
    """A loss that falls along its input-gradient (cos beyond its peak): |.| flips the penalty's sign."""
    x = torch.full((1, 1, 1, 1), 1.0)
    y = torch.zeros(1, dtype=torch.long)

    def loss_fn(params, images, labels):
        return torch.cos(params["w"] * images).mean()

    params = {"w": torch.tensor(1.0)}
    h, lam = 3.0, 2.0
    # z = h * sign(d/dx cos(x)) = -3: cos(-2) < cos(1), so l(x+z) - l(x) < 0
    w = torch.tensor(1.0, requires_grad=True)

    def diff():
        return torch.cos(w * (x - h)).mean() - torch.cos(w * x).mean()

    assert diff() < 0
    (want_abs,) = torch.autograd.grad(torch.cos(w * x).mean() + lam * diff().abs(), w)
    (want_diff,) = torch.autograd.grad(torch.cos(w * x).mean() + lam * diff(), w)
    got_abs = Curvature(h=h, lam=lam, form="absolute").parameter_gradient(loss_fn, params, x, y)["w"]
    got_diff = Curvature(h=h, lam=lam, form="difference").parameter_gradient(loss_fn, params, x, y)["w"]
    torch.testing.assert_close(got_abs, want_abs)
    torch.testing.assert_close(got_diff, want_diff)
    assert not torch.allclose(got_abs, got_diff)
