"""Does keeping synthetic images in [0, 1] cost accuracy? `gm` at the quickstart's setting with the
per-step projection (clamp = true, our default) and without it (DC's unconstrained images, clipped
once when saved), same seed, same evaluation.

    python benchmarks/clamp_cost.py [--iterations 30]
"""

from __future__ import annotations

import argparse

from rdd_plugins.config import merge, resolve
from rdd_plugins.distillation.loop import run_distillation
from rdd_plugins.evaluation.pipeline import evaluate_set
from rdd_plugins.run.parts import load_test_split
from rdd_plugins.plugins import get_registry
from rdd_plugins.quickstart import QUICKSTART


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=QUICKSTART["distill"]["iterations"])
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    registry = get_registry()
    base = merge(QUICKSTART, {"device": args.device, "distill": {"iterations": args.iterations}})
    test = load_test_split(registry, resolve(base=base))
    for clamp in (True, False):
        params = {**QUICKSTART["distill"]["params"], "clamp": clamp}
        cfg = resolve(base=merge(base, {"distill": {"params": params}}))
        ds = run_distillation(cfg, registry, None, progress=False)
        (r,) = evaluate_set(ds, cfg, registry, test=test, label=f"clamp={clamp}", progress=False)
        s = r["summary"]
        robust = ", ".join(f"{k}: {v['mean']:.1f}" for k, v in s["worst"]["Linf"].items())
        print(f"gm clamp={clamp!s:<5}  clean {s['clean']['mean']:.2f} ± {s['clean']['std']:.2f}  pgd {robust}",
              flush=True)


if __name__ == "__main__":
    main()
