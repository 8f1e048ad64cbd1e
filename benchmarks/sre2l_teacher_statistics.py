"""Which BatchNorm statistics should the SRe2L teacher's regularizer see? The quickstart's teacher
(width-32 BatchNorm ConvNet, ``--epochs`` on Fashion-MNIST, curvature h = 1) trained with
``regularizer_statistics`` "batch" (every pass with its batch's statistics) and "running" (GUARD's
released squeeze: the regularizer's term in eval mode), then scored on the first 2000 test points in
eval mode (as recover and relabel read it) and with batch statistics.

    python benchmarks/sre2l_teacher_statistics.py [--modes batch running] [--lam 1.0] [--epochs 1]
"""

from __future__ import annotations

import argparse
import time

import torch

import rdd_plugins
from rdd_plugins.distillation.contract import DistillContext
from rdd_plugins.runtime import resolve_device


def accuracy(model, images, labels, *, train_mode: bool) -> float:
    model.train(train_mode)
    with torch.no_grad():
        return 100 * (model(images).argmax(1) == labels).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", nargs="+", default=["batch", "running"])
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    registry = rdd_plugins.get_registry()
    train = registry.create("datasets", "fashion-mnist", None, "train")
    train.images, train.labels = train.images.to(device), train.labels.to(device)  # as the distill loop does
    test = registry.create("datasets", "fashion-mnist", None, "test")
    images, labels = test.images[:2000].to(device), test.labels[:2000].to(device)

    def make_model():
        return registry.create("backbones", "convnet", train.channels, train.num_classes, train.image_size,
                               train.mean, train.std, width=32, norm="batch").to(device)

    print("| statistics | λ | epochs | eval-mode acc (%) | batch-statistics acc (%) | seconds |")
    print("|---|---|---|---|---|---|")
    for mode in args.modes:
        context = DistillContext(train=train, ipc=10, iterations=1, make_model=make_model,
                                 regularizer=registry.create("regularizers", "curvature", h=1.0, lam=args.lam),
                                 device=device, progress=False, seed=args.seed)
        distiller = registry.create("distillers", "sre2l", teacher_epochs=args.epochs, regularizer_statistics=mode)
        start = time.perf_counter()
        teacher = context.fresh_model("teacher")
        distiller._squeeze(teacher, context)
        seconds = time.perf_counter() - start
        print(f"| {mode} | {args.lam} | {args.epochs} | {accuracy(teacher, images, labels, train_mode=False):.1f} "
              f"| {accuracy(teacher, images, labels, train_mode=True):.1f} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
