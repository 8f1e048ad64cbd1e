"""timm backbones through the registry: ``timm:NAME`` family entry, CIFAR stem, one-line errors."""

import json

import pytest
import torch
from torch import nn

import rdd_plugins
from rdd_plugins.errors import RddError

FASHION = (1, 10, (28, 28), (0.286,), (0.353,))
CIFAR = (3, 10, (32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


@pytest.fixture(autouse=True)
def _one_thread():
    """On a busy 2-core machine torch's intra-op thread pool slows small convolutions many times
    over (threads wait on each other at every op); one thread keeps these tests' time stable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def create(name, *args, **params):
    return rdd_plugins.get_registry().create("backbones", name, *args, **params)


def test_family_entry_comes_from_the_timm_plugin():
    entry = rdd_plugins.get_registry().get("backbones", "timm:resnet18")
    assert entry.name == "timm:" and entry.plugin == "timm"


def test_resnet18_on_fashion_mnist_gets_the_cifar_stem():
    model = create("timm:resnet18", *FASHION)
    net = model.net
    assert isinstance(net.conv1, nn.Conv2d)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.padding == (1, 1)
    assert (net.conv1.in_channels, net.conv1.out_channels) == (1, 64)
    assert isinstance(net.maxpool, nn.Identity)
    assert model.training  # the construction-time check runs in eval mode and restores the mode
    # normalization is the first layer: it owns mean/std
    assert torch.allclose(model.normalize.mean.flatten(), torch.tensor([0.286]))
    out = model.eval()(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10)
    # the stem keeps spatial resolution: the last stage sees a 4x4 map from 28x28, not 1x1
    assert net.forward_features(model.normalize(torch.rand(1, 1, 28, 28))).shape[-2:] == (4, 4)


def test_resnet18_on_cifar_shape_and_bn_stats_untouched_by_the_check():
    model = create("timm:resnet18", *CIFAR)
    assert model.net.conv1.in_channels == 3 and model.net.conv1.stride == (1, 1)
    assert torch.equal(model.net.bn1.running_mean, torch.zeros(64))  # check pass was in eval mode
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_deep_stem_resnet_keeps_its_convs_with_stride_one():
    model = create("timm:resnet10t", *CIFAR)
    convs = [m for m in model.net.conv1.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(c.stride == (1, 1) for c in convs)
    assert isinstance(model.net.maxpool, nn.Identity)


@pytest.mark.parametrize("variant", ["vit_tiny_patch16_224", "mobilenetv3_small_050"])
def test_non_resnet_variant_works_or_fails_in_one_line(variant):
    try:
        model = create(f"timm:{variant}", *FASHION)
    except RddError as exc:
        assert "\n" not in str(exc) and variant in str(exc)
        return
    assert model.eval()(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    if variant.startswith("vit"):  # built for the real image size: patch grid from 28 px
        assert tuple(model.net.patch_embed.img_size) == (28, 28)


def test_unknown_variant_is_a_one_line_error_naming_it():
    with pytest.raises(RddError) as err:
        create("timm:resnet_does_not_exist", *FASHION)
    assert "resnet_does_not_exist" in str(err.value) and "\n" not in str(err.value)


def test_pretrained_and_reserved_params_are_refused():
    with pytest.raises(RddError, match="pretrained"):
        create("timm:resnet18", *FASHION, pretrained=True)
    with pytest.raises(RddError, match="num_classes"):
        create("timm:resnet18", *FASHION, num_classes=3)


def test_model_that_does_not_fit_the_input_size_is_a_one_line_error():
    # Swin's window attention needs the patch grid to divide by its window: 28 px does not work
    with pytest.raises(RddError) as err:
        create("timm:swin_tiny_patch4_window7_224", *FASHION)
    assert "swin_tiny_patch4_window7_224" in str(err.value) and "\n" not in str(err.value)


def test_params_reach_create_model():
    model = create("timm:resnet18", *FASHION, drop_rate=0.5)
    assert model.net.drop_rate == 0.5


def test_timm_resnet_trains():
    torch.manual_seed(0)
    model = create("timm:resnet18", *FASHION)
    x = torch.rand(16, 1, 28, 28)
    y = torch.arange(16) % 4
    x[y == 1] *= 0.3
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(6):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.7, losses


def test_rdd_plugins_json_lists_the_timm_family(capsys):
    from rdd_plugins.cli import main

    assert main(["plugins", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    entry = next(e for e in out["backbones"] if e["name"] == "timm:")
    assert entry["plugin"] == "timm" and entry["description"]
    assert out["failed_plugins"] == []
