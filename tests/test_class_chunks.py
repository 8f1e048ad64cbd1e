"""Issue #18: classes through vmap a chunk at a time, and regularizers checked under vmap at start."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import rdd_plugins
from rdd_plugins.builtin.backbones import convnet
from rdd_plugins.builtin.distillers import gm as gm_module
from rdd_plugins.builtin.distillers.gm import GradientMatching
from rdd_plugins.distillation.matching import (check_regularizer_vmaps, classes_that_fit, make_loss_fn,
                                               matching_losses, real_class_gradients,
                                               synthetic_class_gradients, trainable_params)
from rdd_plugins.errors import RddError

CLASSES = 5


def tiny_model():
    torch.manual_seed(0)
    return convnet(1, CLASSES, 8, (0.5,), (0.25,), width=4, depth=2, norm="instance")


def batch(per_class=3):
    torch.manual_seed(1)
    x = torch.rand(CLASSES, per_class, 1, 8, 8)
    y = torch.arange(CLASSES).view(CLASSES, 1).expand(CLASSES, per_class).contiguous()
    return x, y


def registry_regularizer(name, **params):
    return rdd_plugins.get_registry().create("regularizers", name, **params)


class ConvolutionBatches(TorchDispatchMode):
    """Records the batch size of every convolution as it runs, vmap's batched tensors unwrapped:
    how many images one forward holds at once."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            self.sizes.append(args[0].shape[0])
        return func(*args, **(kwargs or {}))


# -- chunked vmap: the loop's gradients, memory bounded by one chunk ----------------------------------


@pytest.mark.parametrize("regularizer", ["none", "curvature"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5])  # 2 and 3 do not divide 5 classes
def test_chunked_vmap_gives_the_loops_gradients(regularizer, chunk):
    model, (x, y) = tiny_model(), batch()
    reg = registry_regularizer(regularizer)
    args = (make_loss_fn(model), trainable_params(model), x, y)
    looped = real_class_gradients(reg, *args, batched=False)
    chunked = real_class_gradients(reg, *args, batched=True, chunk=chunk)
    syn_looped = synthetic_class_gradients(*args, batched=False)
    syn_chunked = synthetic_class_gradients(*args, batched=True, chunk=chunk)
    for name in looped:
        torch.testing.assert_close(chunked[name], looped[name], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(syn_chunked[name], syn_looped[name], rtol=1e-6, atol=1e-6)


def test_chunked_matching_loss_and_its_image_gradient_equal_the_loops():
    model, (x, y) = tiny_model(), batch()
    syn = torch.rand(CLASSES, 2, 1, 8, 8, requires_grad=True)
    reg = registry_regularizer("curvature")
    args = (reg, make_loss_fn(model), trainable_params(model), x, y, syn, y[:, :2])
    looped = matching_losses(*args, batched=False).sum()
    chunked = matching_losses(*args, batched=True, chunk=2).sum()
    torch.testing.assert_close(chunked, looped, rtol=1e-6, atol=1e-6)
    (g_looped,), (g_chunked,) = torch.autograd.grad(looped, syn), torch.autograd.grad(chunked, syn)
    torch.testing.assert_close(g_chunked, g_looped, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [CLASSES, CLASSES + 3])
def test_a_chunk_covering_all_classes_is_the_plain_vmap_path_random_draws_included(chunk):
    model, (x, y) = tiny_model(), batch()
    reg = registry_regularizer("adversarial", steps=2)  # its random start draws per class under vmap
    args = (make_loss_fn(model), trainable_params(model), x, y)
    torch.manual_seed(7)
    plain = real_class_gradients(reg, *args, batched=True)
    torch.manual_seed(7)
    covering = real_class_gradients(reg, *args, batched=True, chunk=chunk)
    for name in plain:
        assert torch.equal(plain[name], covering[name]), name


@pytest.mark.parametrize("regularizer", ["none", "curvature"])
@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_a_chunk_bounds_the_images_one_forward_holds(regularizer, chunk):
    model, (x, y) = tiny_model(), batch(per_class=3)
    reg = registry_regularizer(regularizer)
    args = (make_loss_fn(model), trainable_params(model), x, y)
    with ConvolutionBatches() as unchunked:
        real_class_gradients(reg, *args, batched=True)
    with ConvolutionBatches() as chunked:
        real_class_gradients(reg, *args, batched=True, chunk=chunk)
    assert max(unchunked.sizes) == CLASSES * 3  # the memory issue: every class at once
    assert max(chunked.sizes) == chunk * 3


def test_gm_run_passes_its_class_chunk_to_the_matching_step(make_config):
    # 4 classes x batch_real 16: unchunked, the real side's forwards hold 64 images
    cfg = make_config(iterations=1, params={"batch_real": 16, "outer_loop": 1, "inner_loop": 0,
                                            "class_batching": "vmap", "class_chunk": 3})
    with ConvolutionBatches() as forwards:
        rdd_plugins.distill(cfg, progress=False)
    assert max(forwards.sizes) == 3 * 16


def test_class_chunk_is_validated():
    with pytest.raises(RddError, match="class_chunk"):
        GradientMatching(class_chunk=-1)


def test_classes_that_fit_a_budget():
    assert classes_that_fit(budget_bytes=1000, per_class_bytes=100, classes=4) == 4  # all fit
    assert classes_that_fit(budget_bytes=350, per_class_bytes=100, classes=10) == 3
    assert classes_that_fit(budget_bytes=99, per_class_bytes=100, classes=10) == 0  # not one: the loop
    assert classes_that_fit(budget_bytes=0, per_class_bytes=0, classes=10) == 10  # nothing measured


# -- regularizers checked under vmap when a gm/dsa run starts ------------------------------------------


class ItemRegularizer:
    """Works in the CPU loop, not under vmap: .item() on a tensor."""

    def parameter_gradient(self, loss_fn, params, images, labels):
        from rdd_plugins.distillation.autodiff import grad

        scale = 1.0 if loss_fn(params, images, labels).item() > 0 else 0.5
        return {k: g * scale for k, g in grad(loss_fn)(params, images, labels).items()}


class BranchingRegularizer:
    """Works in the CPU loop, not under vmap: Python branching on a tensor's value."""

    def parameter_gradient(self, loss_fn, params, images, labels):
        from rdd_plugins.distillation.autodiff import grad

        g = grad(loss_fn)(params, images, labels)
        if loss_fn(params, images, labels) > 100:
            return {k: v * 0 for k, v in g.items()}
        return g


class LoopOnlyPlugin:
    @rdd_plugins.hookimpl
    def rdd_register_regularizers(self, register):
        register("item-reg", ItemRegularizer, "calls .item()")
        register("branching-reg", BranchingRegularizer, "branches on a tensor")


@pytest.mark.parametrize("name", ["item-reg", "branching-reg"])
@pytest.mark.parametrize("distiller", ["gm", "dsa"])
def test_a_regularizer_that_only_loops_fails_the_run_at_start(tmp_path, make_config, name, distiller):
    rdd_plugins.plugins.register_plugin(LoopOnlyPlugin(), name="loop-only")
    cfg = make_config(distiller=distiller, regularizer=name)  # class_batching auto: a loop on this CPU
    out = tmp_path / "run"
    with pytest.raises(RddError) as failure:
        rdd_plugins.distill(cfg, out=out, progress=False)
    message = str(failure.value)
    assert "\n" not in message
    assert f"regularizer {name!r}" in message and "torch.func-composable" in message
    assert "no .item(), no Python branching on tensor values" in message
    assert not (out / "history.json").exists()


@pytest.mark.parametrize("name", ["none", "curvature", "cure", "gradient-norm", "adversarial"])
def test_builtin_regularizers_pass_the_vmap_check(name):
    model, (x, y) = tiny_model(), batch(per_class=2)
    check_regularizer_vmaps(registry_regularizer(name), make_loss_fn(model), trainable_params(model),
                            x[:2], y[:2])


def test_the_check_blames_no_regularizer_for_a_backbone_that_does_not_vmap():
    model, (x, y) = tiny_model(), batch(per_class=2)

    def loss_fn(params, images, labels):
        if images.sum() > 0:  # the backbone's fault: the plain gradient fails under vmap too
            return make_loss_fn(model)(params, images, labels)
        return make_loss_fn(model)(params, images, labels) * 2

    check_regularizer_vmaps(registry_regularizer("curvature"), loss_fn, trainable_params(model), x[:2], y[:2])


def test_the_check_leaves_the_runs_random_stream_alone(make_config, monkeypatch):
    cfg = make_config(iterations=1)  # the check builds a network: it draws from torch's generator
    checked = rdd_plugins.distill(cfg, progress=False)
    monkeypatch.setattr(gm_module, "check_regularizer_on_run", lambda context: None)
    unchecked = rdd_plugins.distill(cfg, progress=False)
    assert torch.equal(checked.images, unchecked.images)
