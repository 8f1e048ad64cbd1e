"""Built-in distillers, registered through the public hook like any plugin's."""

from ...plugins import hookimpl
from .dm import DistributionMatching
from .dsa import DifferentiableSiameseAugmentation
from .gm import GradientMatching, dc_loops
from .sre2l import SqueezeRecoverRelabel
from .subsets import Herding, RandomSubset

__all__ = ["GradientMatching", "DifferentiableSiameseAugmentation", "DistributionMatching", "RandomSubset", "Herding", "SqueezeRecoverRelabel", "dc_loops"]


@hookimpl
def rdd_register_distillers(register):
    register("gm", GradientMatching, "DC gradient matching; the real gradient includes the regularizer")
    register("dsa", DifferentiableSiameseAugmentation,
             "gradient matching with differentiable siamese augmentation (DSA)")
    register("dm", DistributionMatching, "distribution matching of random-network feature means (DM)")
    register("sre2l", SqueezeRecoverRelabel,
             "squeeze-recover-relabel; with --regularizer curvature the teacher is GUARD's")
    register("random", RandomSubset, "random real images per class (baseline)")
    register("herding", Herding, "herding on features of a briefly trained backbone (baseline)")
