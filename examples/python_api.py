"""The Python API in a few lines: distil, evaluate, reload, list parts.

CPU-sized: every size is set small in the config dict below (width-32 ConvNet, 10 iterations of
(outer 5, inner 5) matching loops with 32 real images per class, 2 evaluation models of 100 epochs,
FGSM and PGD-10 at two radii): 6 min 43 s on 2 CPU cores that another job was sharing
(`/usr/bin/time python examples/python_api.py`). DC's defaults (width
128, 1000 iterations of (10, 50), batch_real 256) are a GPU job: see README, "Usage".

By default it runs on the generated ``synthetic`` dataset, which needs no files; DATASET=fashion-mnist
runs the same sizes on real data (first 1000 test points).

    python examples/python_api.py
    DATASET=fashion-mnist python examples/python_api.py
"""

import os

import rdd_plugins

DATASET = os.environ.get("DATASET", "synthetic")
OUT = "runs/example-api"

tiny = {
    "seed": 0,
    "data": {"dataset": DATASET},
    "backbone": {"name": "convnet", "params": {"width": 32}},
    "distill": {
        "distiller": "gm", "ipc": 10, "iterations": 10, "regularizer": "curvature",
        "params": {"batch_real": 32, "outer_loop": 5, "inner_loop": 5},
    },
    # FGSM, then 10-step PGD on the points FGSM left, at two eps; per-attack parameters as tables.
    # synthetic's test split is class-major and small (320 points): take all of it.
    "evaluate": {"seeds": 2, "epochs": 100, "n_test": 0 if DATASET == "synthetic" else 1000,
                 "attack": "fgsm,pgd", "attack_params": {"pgd": {"steps": 10}}, "eps": ["2/255", "8/255"]},
}

print("attacks:", rdd_plugins.get_registry().names("attacks"))

# overwrite=True: a rerun replaces the set in OUT (and what was derived from it)
distilled = rdd_plugins.distill(tiny, out=OUT, overwrite=True)
print("distilled", tuple(distilled.images.shape), "images; pixel range",
      float(distilled.images.min()), "..", float(distilled.images.max()))

# the evaluation starts from the config stored with the set (its [evaluate] section above)
(result,) = rdd_plugins.evaluate(OUT, out=f"{OUT}/evaluation")  # one row per evaluation backbone
print("clean", result["summary"]["clean"], "worst case", result["summary"]["worst"]["Linf"])
print("robustness indices", result["summary"]["indices"])

again = rdd_plugins.load_distilled(OUT)
assert (again.images == distilled.images).all()
print("report:", f"{OUT}/evaluation/report.md")
