"""Is GUARD's curvature term in DC's matching (`gm` + `curvature`) more robust than plain `gm`,
beyond the run-to-run spread? Both distilled from several run seeds, paired by seed.

The quickstart's `gm` setting (Fashion-MNIST, IPC 10, width-32 ConvNet, `--iterations` of (outer 10,
inner 10), batch_real 64), evaluated as the quickstart's (`--models` ConvNets per set, PGD-10 on the
first 1000 test points, worst case over the smaller eps). Seed s gives both rows the same initial
images, networks, real batches and evaluation models, so the per-seed difference isolates the
regularizer; the summary gives its mean over seeds ± the standard error of that mean, and how many
seeds have curvature ahead. One quickstart table is one seed: this script says whether its gaps
are the method or the seed.

    python benchmarks/gm_curvature_seeds.py [--seeds 0 1 2 3] [--lam 0.3] [--h 1.0] [--iterations 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

from rdd_plugins.config import merge, resolve
from rdd_plugins.distillation.loop import run_distillation
from rdd_plugins.evaluation.pipeline import evaluate_set
from rdd_plugins.run.parts import load_test_split
from rdd_plugins.plugins import get_registry
from rdd_plugins.quickstart import QUICKSTART


def row_accuracies(result: dict, eps: list[str]) -> list[float]:
    """Clean, then worst-case robust accuracy at each eps: means over the evaluation models."""
    s = result["summary"]
    return [s["clean"]["mean"]] + [s["worst"]["Linf"][e]["mean"] for e in eps]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="run seeds (one pair each)")
    ap.add_argument("--h", type=float, default=1.0)
    ap.add_argument("--lam", type=float, default=0.3)
    ap.add_argument("--iterations", type=int, default=QUICKSTART["distill"]["iterations"])
    ap.add_argument("--models", type=int, default=QUICKSTART["evaluate"]["seeds"], help="evaluation models per set")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    registry = get_registry()
    base = merge(QUICKSTART, {"device": args.device, "distill": {"distiller": "gm", "iterations": args.iterations},
                              "evaluate": {"seeds": args.models}})
    eps = list(base["evaluate"]["eps"])
    test = load_test_split(registry, resolve(base=base))
    rows = {"gm": {"regularizer": "none", "regularizer_params": {}},
            "gm+curvature": {"regularizer": "curvature", "regularizer_params": {"h": args.h, "lam": args.lam}}}
    print(f"gm vs gm+curvature (h={args.h:g}, lam={args.lam:g}), {args.iterations} iterations, "
          f"{args.models} models per set, seeds {args.seeds}")
    print("| seed | set | clean | " + " | ".join(f"PGD {e}" for e in eps) + " | distil (s) |")
    print("|---" * (len(eps) + 4) + "|")
    diffs = []  # per seed: curvature minus gm, for clean and each eps
    for seed in args.seeds:
        accs = {}
        for label, distill in rows.items():
            cfg = resolve(base=merge(base, {"seed": seed, "distill": distill}))
            t0 = time.perf_counter()
            ds = run_distillation(cfg, registry, None, progress=False)
            seconds = time.perf_counter() - t0
            (result,) = evaluate_set(ds, cfg, registry, test=test, label=label, progress=False)
            accs[label] = row_accuracies(result, eps)
            print(f"| {seed} | {label} | " + " | ".join(f"{a:.2f}" for a in accs[label]) + f" | {seconds:.0f} |",
                  flush=True)
        diffs.append([c - g for c, g in zip(accs["gm+curvature"], accs["gm"])])
    n = len(diffs)
    print(f"\ncurvature minus gm over {n} seeds: mean ± standard error (seeds with curvature ahead)")
    print("| | clean | " + " | ".join(f"PGD {e}" for e in eps) + " |")
    print("|---" * (len(eps) + 2) + "|")
    cells = []
    for column in zip(*diffs):
        mean = statistics.fmean(column)
        se = statistics.stdev(column) / n ** 0.5 if n > 1 else float("nan")
        cells.append(f"{mean:+.2f} ± {se:.2f} ({sum(d > 0 for d in column)}/{n})")
    print("| difference | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
