"""GUARD's published pipeline against SRe2L: `sre2l` with the teacher's training loss regularized
by `curvature` (GUARD), exact `cure`, PGD `adversarial` training, or nothing (SRe2L), same seed.

The setting is `sre2l_crop.py`'s (Fashion-MNIST, width-32 BatchNorm ConvNet, teacher 2 epochs, IPC 10,
`--iterations` recover steps, no recover crop, sre2l's per-crop relabelling unless
`--relabel-crops`); evaluation as the quickstart's (`--seeds` models trained with KD on the
teacher's soft labels, PGD-10 on the first 1000 test points, worst case over the smaller eps).
Only the teacher's regularizer differs between rows, and the seed: every row starts from the same
teacher initialisation and data order, except that `adversarial`'s random PGD starts draw from the
same generator, so after its first batch its data order, initial images and crop views differ.
"distil" is squeeze + recover + relabel seconds, "total" adds the evaluation.

    python benchmarks/guard_sre2l.py [--iterations 300] [--rows none curvature-0.3 ...]
        [--relabel-crops R --relabel-min-scale S] [--seeds N] [--seed S]
"""

from __future__ import annotations

import argparse
import time

from rdd_plugins.config import merge, resolve
from rdd_plugins.distillation.loop import run_distillation
from rdd_plugins.evaluation.pipeline import evaluate_set
from rdd_plugins.run.parts import load_test_split
from rdd_plugins.plugins import get_registry
from rdd_plugins.quickstart import QUICKSTART

ROWS = {
    "none": ("none", {}),
    "curvature-0.3": ("curvature", {"h": 1.0, "lam": 0.3}),
    "curvature-1": ("curvature", {"h": 1.0, "lam": 1.0}),
    "cure-0.4": ("cure", {"h": 1.0, "lam": 0.4}),  # GUARD's lambda 100 on a batch-mean loss, batch 256
    "adversarial-pgd5": ("adversarial", {"eps": 8 / 255, "steps": 5}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), default=["none", "curvature-0.3", "curvature-1"])
    ap.add_argument("--relabel-crops", type=int, help="per-crop relabelling views (0: one label per image; "
                                                       "default: sre2l's)")
    ap.add_argument("--relabel-min-scale", type=float, help="default: sre2l's")
    ap.add_argument("--seeds", type=int, default=2, help="evaluation models per row")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (teacher, recovery, evaluation)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    registry = get_registry()
    params = {"teacher_epochs": 2}
    if args.relabel_crops is not None:
        params["relabel_crops"] = args.relabel_crops
    if args.relabel_min_scale is not None:
        params["relabel_min_scale"] = args.relabel_min_scale
    base = merge(QUICKSTART, {"seed": args.seed, "device": args.device, "backbone": {"params": {"width": 32, "norm": "batch"}},
                              "distill": {"distiller": "sre2l", "iterations": args.iterations, "params": params},
                              "evaluate": {"seeds": args.seeds}})
    test = load_test_split(registry, resolve(base=base))
    eps = " | ".join(base["evaluate"]["eps"])
    print(f"| teacher regularizer | clean | PGD {eps} | distil (s) | total (s) |")
    print("|---" * (4 + len(base["evaluate"]["eps"])) + "|")
    for row in args.rows:
        name, params = ROWS[row]
        cfg = resolve(base=merge(base, {"distill": {"regularizer": name, "regularizer_params": params}}))
        t0 = time.perf_counter()
        ds = run_distillation(cfg, registry, None, progress=False)
        t_distil = time.perf_counter() - t0
        (r,) = evaluate_set(ds, cfg, registry, test=test, label=row, progress=False)
        s = r["summary"]
        cells = " | ".join(f"{v['mean']:.1f}" for v in s["worst"]["Linf"].values())
        print(f"| {row} | {s['clean']['mean']:.2f} ± {s['clean']['std']:.2f} | {cells} | {t_distil:.0f} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
