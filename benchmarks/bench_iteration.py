"""Cost of one whole distillation iteration, per regularizer: what a `gm` run actually pays.

`bench_distill.py` times one matching step, where the regularizer acts. A DC iteration is
outer_loop matching steps plus (outer_loop - 1) x inner_loop epochs of training the network on the
synthetic set, and that inner training costs every regularizer the same. This script times the
real thing: `rdd_plugins.distill` with the registered `gm` distiller, each iteration's wall time
read from the `rdd_distill_step` hook by a plugin registered in-process (the first iteration is a
warm-up and not counted). Each row runs in a fresh process, so peak memory (peak RSS on CPU,
max_memory_allocated on CUDA) is its own; it includes the training set, held in memory or on the
GPU, so it is not comparable with bench_distill.py's. The same seed, so every row sees the same
networks and real batches.

Settings: `dc` is DC's reference (Fashion-MNIST, ConvNet width 128, instance norm, batch_real 256,
IPC 10, DC's (outer, inner) = (10, 50)); `cpu-quick` is the quickstart's (width 32, batch_real 64,
(10, 10)).

    python benchmarks/bench_iteration.py --setting cpu-quick           # 2 CPU cores: about 3 minutes
    python benchmarks/bench_iteration.py --setting dc --repeats 1      # 2 CPU cores: about 30 minutes
    python benchmarks/bench_iteration.py --setting dc --device cuda    # on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_distill import ROWS, SETTINGS, peak_mib  # noqa: E402  (one definition of the rows and settings)

import rdd_plugins  # noqa: E402
from rdd_plugins.builtin.distillers import dc_loops  # noqa: E402
from rdd_plugins.quickstart import QUICKSTART  # noqa: E402

def _quickstart_loops() -> tuple[int, int]:
    params = QUICKSTART["distill"]["params"]
    return params["outer_loop"], params["inner_loop"]


LOOPS = {"dc": dc_loops(SETTINGS["dc"]["ipc"]), "cpu-quick": _quickstart_loops()}
REGULARIZER_ROWS = [row for row, spec in ROWS.items() if spec is not None]


class IterationTimer:
    """An in-process plugin: the wall time of every finished iteration, as the loop reports it."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    @rdd_plugins.hookimpl
    def rdd_distill_step(self, step):
        self.seconds.append(step.seconds)


def measure(row: str, setting: str, dataset: str, device_name: str, repeats: int, seed: int) -> dict:
    from rdd_plugins.runtime import resolve_device
    from rdd_plugins.plugins import register_plugin, unregister_plugin

    s, (outer, inner) = SETTINGS[setting], LOOPS[setting]
    regularizer, reg_params = ROWS[row]
    data = {"dataset": dataset}
    if dataset == "synthetic":  # the setting's shape, enough images per class for batch_real
        data["params"] = {"num_classes": s["classes"], "channels": s["channels"], "image_size": s["size"],
                          "per_class": s["batch_real"]}
    config = {
        "seed": seed, "device": device_name, "data": data,
        "backbone": {"name": "convnet", "params": {"width": s["width"]}},
        "distill": {"distiller": "gm", "ipc": s["ipc"], "iterations": repeats + 1,
                    "params": {"batch_real": s["batch_real"], "outer_loop": outer, "inner_loop": inner},
                    "regularizer": regularizer, "regularizer_params": reg_params},
    }
    timer = IterationTimer()
    register_plugin(timer, "bench-iteration-timer")
    try:
        rdd_plugins.distill(config, progress=False)
    finally:
        unregister_plugin("bench-iteration-timer")
    device = resolve_device(device_name)
    counted = timer.seconds[1:]
    return {"row": row, "median_s": statistics.median(counted), "all_s": timer.seconds,
            "peak_mib": peak_mib(device), "device": str(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(LOOPS), default="cpu-quick")
    ap.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (default) or synthetic")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3, help="iterations timed after one warm-up iteration")
    ap.add_argument("--rows", nargs="+", default=REGULARIZER_ROWS, choices=REGULARIZER_ROWS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    if args.child:
        print(json.dumps(measure(args.child, args.setting, args.dataset, args.device, args.repeats, args.seed)))
        return
    results = {}
    for row in args.rows:
        cmd = [sys.executable, __file__, "--child", row, "--setting", args.setting, "--dataset", args.dataset,
               "--device", args.device, "--repeats", str(args.repeats), "--seed", str(args.seed)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"row {row} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
        results[row] = json.loads(out.stdout.strip().splitlines()[-1])
    s, (outer, inner) = SETTINGS[args.setting], LOOPS[args.setting]
    device = next(iter(results.values()))["device"]
    print(f"setting {args.setting}: {args.dataset}, ConvNet width {s['width']}, {s['classes']} classes x "
          f"batch_real {s['batch_real']}, IPC {s['ipc']}, (outer, inner) = ({outer}, {inner}), device {device}, "
          f"median of {args.repeats} iteration(s) after one warm-up")
    base = results.get("gm+none", {}).get("median_s")
    print("| row | s / iteration | x gm+none | peak MiB |")
    print("|---|---|---|---|")
    for row, r in results.items():
        ratio = f"{r['median_s'] / base:.2f}" if base else "-"
        print(f"| {row} | {r['median_s']:.2f} | {ratio} | {r['peak_mib']:.0f} |")
    if "gm+curvature" in results and "gm+adversarial" in results:
        ratio = results["gm+adversarial"]["median_s"] / results["gm+curvature"]["median_s"]
        print(f"adversarial / curvature: {ratio:.2f}")


if __name__ == "__main__":
    main()
