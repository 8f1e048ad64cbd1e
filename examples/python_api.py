"""The Python API in a few lines: distil, evaluate, reload, list parts.

Runs in about a minute on a CPU with the generated `synthetic` dataset; set DATASET=fashion-mnist
(and raise the iterations) for real data.

    python examples/python_api.py
"""

import os

import rdd_plugins

DATASET = os.environ.get("DATASET", "synthetic")
tiny = {
    "seed": 0,
    "data": {"dataset": DATASET},
    "backbone": {"params": {"width": 16}},
    "distill": {"ipc": 2, "iterations": 5, "regularizer": "curvature",
                "params": {"batch_real": 32, "outer_loop": 2, "inner_loop": 2}},
    # FGSM, then 5-step PGD on the points FGSM left, at two eps; per-attack parameters as tables
    "evaluate": {"seeds": 2, "epochs": 50, "n_test": 200, "attack": "fgsm,pgd",
                 "attack_params": {"pgd": {"steps": 5}}, "eps": ["2/255", "8/255"]},
}

print("attacks:", rdd_plugins.get_registry().names("attacks"))
distilled = rdd_plugins.distill(tiny, out="runs/example-api")
print("distilled", tuple(distilled.images.shape), "images; pixel range",
      float(distilled.images.min()), "..", float(distilled.images.max()))

(result,) = rdd_plugins.evaluate("runs/example-api", out="runs/example-api/evaluation")  # one row per backbone
print("clean", result["summary"]["clean"], "worst case", result["summary"]["worst"]["Linf"])
print("robustness indices", result["summary"]["indices"])

again = rdd_plugins.load_distilled("runs/example-api")
assert (again.images == distilled.images).all()
print("report:", "runs/example-api/evaluation/report.md")
