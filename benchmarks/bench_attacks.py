"""How long does robustness evaluation take? The `quick` suite (FGSM, then PGD-20 on the survivors,
Linf 8/255; --eps 2/255 4/255 8/255 16/255 for a curve) on the first 1000 Fashion-MNIST test points
for a ConvNet (instance norm; width 128 as DC, or --width 32 as the quickstart), cascaded vs every
attack on every clean-correct point, plus clean accuracy, in one run.

The model is trained the way evaluation trains it (DC protocol) on a distilled set when --set is
given, else on a random 10-per-class subset, so its robustness is that of a distilled-set model.

    python benchmarks/bench_attacks.py [--set DIR] [--suite quick] [--eps E ...] [--width 128] [--n 1000]
"""

from __future__ import annotations

import argparse
import time

import torch

from rdd_plugins.config import resolve
from rdd_plugins.distillation.loop import run_distillation
from rdd_plugins.evaluation.pipeline import run_attacks
from rdd_plugins.evaluation.robust import clean_correct
from rdd_plugins.evaluation.suites import plan_attacks
from rdd_plugins.evaluation.train import train_model
from rdd_plugins.plugins import get_registry
from rdd_plugins.run.parts import load_test_split, model_factory
from rdd_plugins.runtime import prepare_device
from rdd_plugins.storage import load_distilled


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", help="a distilled-set folder (default: a random 10-per-class subset)")
    ap.add_argument("--suite", default="quick")
    ap.add_argument("--eps", nargs="+", help="Linf eps grid instead of the suite's")
    ap.add_argument("--n", type=int, default=1000, help="first N test points")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--width", type=int, default=128, help="ConvNet width (DC: 128; the quickstart: 32)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    registry = get_registry()
    cfg = resolve(base={"seed": 0, "device": args.device, "data": {"dataset": "fashion-mnist"},
                        "distill": {"distiller": "random", "ipc": 10},
                        "evaluate": {"n_test": args.n, "epochs": args.epochs}})
    device = prepare_device(cfg.device)
    test = load_test_split(registry, cfg)
    ds = load_distilled(args.set) if args.set else run_distillation(cfg, registry, None, progress=False)
    make_model = model_factory(registry, "convnet", {"width": args.width}, test, device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = train_model(make_model(), ds.images.to(device), ds.labels.to(device), epochs=args.epochs,
                        progress=False)
    train_s = time.perf_counter() - t0
    x, y = test.images.to(device), test.labels.to(device)
    clean_correct(model, x, y, args.batch_size)  # warm-up
    t0 = time.perf_counter()
    correct = clean_correct(model, x, y, 1000)
    clean_s = time.perf_counter() - t0
    plan, _ = plan_attacks(registry, suite=args.suite, eps=args.eps)
    print(f"device {device}, {torch.get_num_threads()} threads; ConvNet-{args.width} trained {args.epochs} epochs on "
          f"{ds.images.shape[0]} images in {train_s:.1f} s; clean {100 * correct.float().mean():.1f}% on "
          f"{x.shape[0]} points in {clean_s:.3f} s")
    print(f"suite {args.suite}: " + ", ".join(f"{a.attack} {a.params or ''}".strip() for a in plan)
          + f"; eps {', '.join(plan[0].eps)}")
    print("| mode | seconds | worst-case robust % per eps |")
    print("|---|---|---|")
    for cascade in (True, False):
        t0 = time.perf_counter()
        per, worst = run_attacks(model, registry, plan, cascade, x, y, correct, seed=0,
                                 batch_size=args.batch_size, progress=False, name="bench")
        seconds = time.perf_counter() - t0
        cells = ", ".join(f"{e}: {100 * v:.1f}" for t in worst for e, v in worst[t].items())
        print(f"| {'cascade' if cascade else 'each on all points'} | {seconds:.1f} | {cells} |", flush=True)
        if cascade:
            for name, per_eps in per.items():
                print("    " + name + ": " + ", ".join(
                    f"{e} {r['seconds']:.2f}s on {r['attacked']} pts" for e, r in per_eps.items()))


if __name__ == "__main__":
    main()
