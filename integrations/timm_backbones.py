"""Backbones from timm, as the family ``timm:NAME`` (``--backbone timm:resnet18``).

Any architecture ``timm.create_model`` knows can be used, always **without pretrained weights**
(they come from a hub, which is out of reach here, and ImageNet weights for a 28-32 px input are
not what distillation or evaluation wants anyway). Extra backbone params go to ``create_model``.

Small-image stem. timm's models are built for ImageNet (224 px). Their stems downsample fast: a
ResNet's 7x7 stride-2 ``conv1`` followed by a stride-2 ``maxpool`` turns a 32x32 CIFAR image into an
8x8 map before the first residual stage, and a 28x28 Fashion-MNIST image into 7x7, so the last
stages see 1x1 maps and most of the network works on almost no spatial information. The standard
CIFAR ResNet (He et al., 2016, and every CIFAR ResNet since) instead uses a 3x3 stride-1 ``conv1``
and no max-pool. So, for inputs of at most 64 px:

* ResNet-family models (they have ``conv1`` and ``maxpool``: resnet*, resnext*, wide_resnet*,
  seresnet*, ...): ``conv1`` is replaced by a 3x3 stride-1 padding-1 convolution with the same
  input and output channels, and ``maxpool`` by ``Identity``. A "deep" stem (``resnet18d`` etc.,
  where ``conv1`` is a stack of three 3x3 convolutions) keeps its convolutions with every stride set
  to 1. The residual stages then see 32/16/8/4 px maps (28/14/7/4 for 28 px inputs).
* Models whose constructor takes ``img_size`` (ViT, DeiT, Swin, MLP-Mixer, ...) are built for the
  actual image size, so their position embeddings and patch grid match the input.
* Other models are left as timm builds them (their global pooling copes with small maps).

Every model is checked with one forward pass of two zero images at construction time; a model that
fails on this input size, or does not return ``(N, num_classes)`` logits, is a one-line
:class:`RddError` naming the variant.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

from rdd_plugins.builtin.backbones import Normalize
from rdd_plugins.errors import RddError
from rdd_plugins.plugins import hookimpl

# Parameters the factory sets itself; passing them as backbone params is an error.
_RESERVED = ("num_classes", "in_chans")
SMALL_IMAGE_MAX = 64  # the stem change applies up to this image side (CIFAR, Fashion-MNIST, Tiny-ImageNet)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _import_timm():
    try:
        with warnings.catch_warnings():
            # torch warns about torch.jit.interface, which timm uses at import time; not ours to fix.
            warnings.simplefilter("ignore", FutureWarning)
            import timm
    except ImportError as exc:
        raise RddError(f"timm backbones need timm: pip install timm ({exc})") from exc
    return timm


def _small_image_stem(model) -> bool:
    """Give a ResNet-family model the CIFAR stem (see the module docstring). True if changed."""
    from torch import nn

    conv1, maxpool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if not isinstance(conv1, nn.Module) or maxpool is None:
        return False
    if isinstance(conv1, nn.Conv2d):
        model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, kernel_size=3, stride=1,
                                padding=1, bias=conv1.bias is not None)
    elif isinstance(conv1, nn.Sequential):  # deep stem: 3x3 convs already, only the stride goes
        convs = [m for m in conv1.modules() if isinstance(m, nn.Conv2d)]
        if not convs:
            return False
        for conv in convs:
            conv.stride = (1, 1)
    else:
        return False
    model.maxpool = nn.Identity()
    return True


def timm_backbone(in_channels: int, num_classes: int, image_size, mean, std, *,
                  variant: str, **params):
    """``timm:VARIANT``: ``timm.create_model(VARIANT, pretrained=False, ...)`` behind ``Normalize``.

    Returns ``nn.Sequential(normalize=Normalize(mean, std), net=<timm model>)``; ``params`` are
    passed to ``timm.create_model`` (e.g. ``drop_rate``). See the module docstring for the stem.
    """
    import torch
    from torch import nn

    if not variant:
        raise RddError("timm backbone: give the architecture as timm:NAME, e.g. timm:resnet18")
    if params.pop("pretrained", False):
        raise RddError(f"timm:{variant}: pretrained=True is not supported (weights are downloaded from a "
                       f"hub, which is not reachable here); models are always trained from scratch")
    clash = [k for k in _RESERVED if k in params]
    if clash:
        raise RddError(f"timm:{variant}: {', '.join(clash)} are set from the dataset; do not pass them")
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    small = max(h, w) <= SMALL_IMAGE_MAX

    timm = _import_timm()
    if not timm.is_model(variant):
        raise RddError(f"timm:{variant}: unknown timm model {variant!r} (list them with "
                       f"python -c \"import timm; print(timm.list_models('*resnet*'))\")")

    def create(**extra):
        return timm.create_model(variant, pretrained=False, num_classes=num_classes,
                                 in_chans=in_channels, **extra, **params)

    try:
        if "img_size" in params:
            net = create()
        else:
            try:  # ViT-like models are built for the real image size
                net = create(img_size=h if h == w else (h, w))
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise
                net = create()  # this architecture does not take img_size
    except RddError:
        raise
    except Exception as exc:
        raise RddError(f"timm:{variant}: timm.create_model failed: {_one_line(exc)}") from exc

    if small:
        _small_image_stem(net)

    model = nn.Sequential(OrderedDict(normalize=Normalize(mean, std), net=net))
    was_training = model.training
    model.eval()  # eval: the check must not move BatchNorm running statistics
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_channels, h, w))
    except Exception as exc:
        raise RddError(f"timm:{variant} does not run on {in_channels}x{h}x{w} images: "
                       f"{_one_line(exc)}") from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise RddError(f"timm:{variant} returned {shape} for 2 images of {in_channels}x{h}x{w}, "
                       f"expected logits of shape (2, {num_classes})")
    return model


@hookimpl
def rdd_register_backbones(register):
    register("timm:", timm_backbone,
             "any timm architecture, timm:NAME (e.g. timm:resnet18), untrained; CIFAR stem for ResNets "
             "on small images; params go to timm.create_model")
