"""Does SRe2L's random-resized-crop during recover help on Fashion-MNIST? `sre2l` at a CPU budget
(width-32 BatchNorm ConvNet, teacher 2 epochs, IPC 10, `--iterations` recover steps) with
crop_min_scale 0 (no crop), 0.5 and 0.08 (SRe2L's ImageNet value), same seed: the teacher is the
same in every row (it is trained before any crop is drawn), so only the recovery differs.
Evaluation as the quickstart's (2 models, KD on the soft labels, PGD-10 on the first 1000 points).
One soft label per image (relabel_crops = 0), as when this was measured, so that only the recover
crop differs from SRe2L without crops.

    python benchmarks/sre2l_crop.py [--iterations 300]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--scales", nargs="+", type=float, default=[0.0, 0.5, 0.08])
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    registry = get_registry()
    base = merge(QUICKSTART, {"device": args.device, "backbone": {"params": {"width": 32, "norm": "batch"}},
                              "distill": {"distiller": "sre2l", "iterations": args.iterations,
                                          "params": {"teacher_epochs": 2, "relabel_crops": 0}},
                              "evaluate": {"eps": ["2/255", "8/255", "16/255"]}})
    test = load_test_split(registry, resolve(base=base))
    print("| crop_min_scale | clean | PGD 2/255 | 8/255 | 16/255 | s |")
    print("|---|---|---|---|---|---|")
    for scale in args.scales:
        params = {"teacher_epochs": 2, "relabel_crops": 0, "crop_min_scale": scale}  # a params table is replaced whole
        cfg = resolve(base=merge(base, {"distill": {"params": params}}))
        t0 = time.perf_counter()
        ds = run_distillation(cfg, registry, None, progress=False)
        (r,) = evaluate_set(ds, cfg, registry, test=test, label=f"crop={scale}", progress=False)
        s = r["summary"]
        cells = " | ".join(f"{v['mean']:.1f}" for v in s["worst"]["Linf"].values())
        print(f"| {scale:g} | {s['clean']['mean']:.2f} ± {s['clean']['std']:.2f} | {cells} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
