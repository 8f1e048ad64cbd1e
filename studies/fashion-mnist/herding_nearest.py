"""Why our herding sits above DC's published herding (reproduction.md): is DC's "herding" the k
images nearest their class mean rather than Welling's greedy herding? This runs the baselines'
herding jobs at IPC 10 and 50, seed 0 (one-epoch feature network, DC's evaluation) with that one
change, as a study whose distiller is a plugin registered here: the way to put a part of your own
into a study without packaging it.

    python studies/fashion-mnist/herding_nearest.py [--out runs/fm-herding-nearest]
    python studies/reproduction.py runs/fm-baselines runs/fm-herding-nearest
"""

from __future__ import annotations

import sys

import torch

import rdd_plugins
from rdd_plugins import api, plugins
from rdd_plugins.builtin.distillers.subsets import Herding


class NearestToMean(Herding):
    """``herding``'s embedding, but the ``ipc`` images of a class nearest its mean feature."""

    def select(self, features: torch.Tensor, count: int) -> torch.Tensor:
        return (features - features.mean(0)).norm(dim=1).argsort()[:count]


class NearestPlugin:
    @rdd_plugins.hookimpl
    def rdd_register_distillers(self, register):
        register("herding-nearest", NearestToMean, "the ipc images nearest their class mean in herding's embedding")


STUDY = {
    "base": {"device": "auto", "data": {"dataset": "fashion-mnist"}, "backbone": {"name": "convnet"},
             "evaluate": {"seeds": 2, "epochs": 300, "attack": "fgsm", "eps": ["8/255"]}},
    "grid": {"ipc": [10, 50], "seed": [0],
             "method": [{"name": "herding-nearest", "distiller": "herding-nearest", "regularizer": "none"}]},
}

if __name__ == "__main__":
    out = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else "runs/fm-herding-nearest"
    plugins.register_plugin(NearestPlugin(), "herding-nearest")
    print(api.study(STUDY, out=out, progress="--no-progress" not in sys.argv)["done"])
