"""Evidence for the curvature penalty's form: how often does ℓ(x+z) − ℓ(x) go negative?

The ``difference`` form λ·(ℓ(x+z) − ℓ(x)) and GUARD's ``absolute`` form λ·|ℓ(x+z) − ℓ(x)| differ
only on class batches where stepping along the input-gradient lowers the loss. This script counts
those batches (and per-sample signs) on real Fashion-MNIST class batches, for networks at the
states gradient matching sees them: freshly initialised, and after inner-loop training.

    python benchmarks/curvature_sign.py [--h 1.0] [--batches 20]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import rdd_plugins


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--h", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--batches", type=int, default=10, help="random networks per setting")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--train-steps", type=int, nargs="+", default=[0, 100])
    args = ap.parse_args()
    torch.manual_seed(0)
    reg = rdd_plugins.get_registry()
    data = reg.create("datasets", "fashion-mnist", None, "train")
    by_class = [torch.nonzero(data.labels == c).flatten() for c in range(10)]
    print(f"{'h':>5} {'train steps':>11} {'class batches with l(x+z)<l(x)':>31} {'samples with l_i(x+z)<l_i(x)':>29}")
    for steps in args.train_steps:
        for h in args.h:
            neg_batches = neg_samples = n_batches = n_samples = 0
            for _ in range(args.batches):
                model = reg.create("backbones", "convnet", 1, 10, (28, 28), data.mean, data.std, width=args.width)
                opt = torch.optim.SGD(model.parameters(), lr=0.01)
                for _ in range(steps):  # like the inner loop: a few SGD steps on a small batch
                    idx = torch.randint(0, len(data.labels), (100,))
                    loss = F.cross_entropy(model(data.images[idx]), data.labels[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                for ix in by_class:
                    sel = ix[torch.randperm(len(ix))[:64]]
                    x = data.images[sel].clone().requires_grad_(True)
                    y = data.labels[sel]
                    per = F.cross_entropy(model(x), y, reduction="none")
                    (g,) = torch.autograd.grad(per.mean(), x)
                    z = h * g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                    with torch.no_grad():
                        per_z = F.cross_entropy(model(x + z), y, reduction="none")
                    neg_batches += int(per_z.mean() < per.mean())
                    neg_samples += int((per_z < per.detach()).sum())
                    n_batches += 1
                    n_samples += len(y)
            print(f"{h:5.2f} {steps:11d} {neg_batches:>20d} / {n_batches:<8d} {neg_samples:>18d} / {n_samples:<8d}")


if __name__ == "__main__":
    main()
