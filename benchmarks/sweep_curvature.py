"""The sweep behind the curvature defaults (h, λ): the quickstart's setting, one regularizer config
per row, plus gm and random for reference. Same seed for every row, so networks, real batches and
evaluation models are paired across rows and only the regularizer differs.

    python benchmarks/sweep_curvature.py --form difference     # the README's sweep (about 1 hour on 2 cores)
    python benchmarks/sweep_curvature.py --grid 1.0:0.3 2.0:0.3 --iterations 30
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

GRID = ["1.0:0.1", "1.0:0.3", "1.0:1", "1.0:3", "1.0:10", "0.5:0.3", "2.0:0.3"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", nargs="+", default=GRID, metavar="H:LAM")
    ap.add_argument("--iterations", type=int, default=QUICKSTART["distill"]["iterations"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--form", default="absolute", choices=["absolute", "difference"],
                    help="curvature's form (README's 30-iteration table: difference)")
    args = ap.parse_args()
    registry = get_registry()
    rows = [("random", {"distiller": "random", "params": {}})] + [("gm", {"regularizer": "none"})]
    for cell in args.grid:
        h, lam = (float(v) for v in cell.split(":"))
        rows.append((f"curvature h={h:g} lam={lam:g}",
                     {"regularizer": "curvature", "regularizer_params": {"h": h, "lam": lam, "form": args.form}}))
    base = merge(QUICKSTART, {"device": args.device, "distill": {"iterations": args.iterations}})
    test = load_test_split(registry, resolve(base=base))
    header = None
    for label, distill in rows:
        cfg = resolve(base=merge(base, {"distill": distill}))
        t0 = time.perf_counter()
        ds = run_distillation(cfg, registry, None, progress=False)
        (r,) = evaluate_set(ds, cfg, registry, test=test, label=label, progress=False)
        if header is None:
            eps = list(r["summary"]["worst"]["Linf"])
            header = "| set | clean | " + " | ".join(f"PGD {e}" for e in eps) + " | s |"
            print(header)
            print("|---" * (len(eps) + 3) + "|")
        s = r["summary"]
        cells = " | ".join(f"{s['worst']['Linf'][e]['mean']:.1f}" for e in eps)
        print(f"| {label} | {s['clean']['mean']:.2f} ± {s['clean']['std']:.2f} | {cells} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
