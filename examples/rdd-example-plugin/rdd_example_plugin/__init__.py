"""An outside plugin: ``pip install ./examples/rdd-example-plugin`` and rdd-plugins picks it up.

It adds the attack ``random-sign``, the attack suite ``random-then-pgd`` (its own attack first, then
rdd-plugins' ``pgd`` on the points it left) and the backbone ``mlp``, through the public hooks only.
"""

import torch
from torch import nn

from rdd_plugins import hookimpl


class RandomSign:
    """A (weak) attack: a random ±eps corner of the ℓ∞ ball. Contract: images in [0, 1], eps in pixels."""

    def __init__(self, model, eps, *, seed_offset: int = 0):
        self.model, self.eps = model, eps

    def __call__(self, images, labels):
        noise = torch.randint_like(images, 0, 2) * 2 - 1
        return (images + self.eps * noise).clamp(0, 1)


def mlp(in_channels, num_classes, image_size, mean, std, *, hidden: int = 128):
    """Two-layer perceptron taking [0, 1] images and normalizing them itself."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)

    class Normalize(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", mean_t)
            self.register_buffer("std", std_t)

        def forward(self, x):
            return (x - self.mean) / self.std

    return nn.Sequential(Normalize(), nn.Flatten(), nn.Linear(in_channels * h * w, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


@hookimpl
def rdd_register_attacks(register):
    register("random-sign", RandomSign, "random corner of the Linf ball (example plugin)")


@hookimpl
def rdd_register_backbones(register):
    register("mlp", mlp, "two-layer perceptron (example plugin)")


@hookimpl
def rdd_register_attack_suites(register):
    from rdd_plugins.evaluation.suites import AttackSuite, SuiteAttack

    # A suite may name attacks of other plugins; names are resolved when it runs.
    register("random-then-pgd", lambda: AttackSuite(
        (SuiteAttack("random-sign"), SuiteAttack("pgd", {"steps": 5})), {"Linf": ("4/255", "8/255")}),
        "random-sign, then PGD-5 on the survivors, Linf 4/255 and 8/255 (example plugin)")
