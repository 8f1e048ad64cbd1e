"""vmap over classes vs a Python loop over classes, for the real-gradient targets of one matching step.

Prints the median time of each (and their ratio) on the chosen device, for `none` and `curvature`.
`gm`'s default `class_batching="auto"` takes vmap on CUDA and the loop on CPU because of these
figures; rerun on your hardware to check.

    python benchmarks/bench_class_batching.py [--device cpu] [--width 32] [--batch-real 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import rdd_plugins
from rdd_plugins.distillation.matching import make_loss_fn, real_class_gradients, trainable_params
from rdd_plugins.runtime import prepare_device


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (allocations, vmap tracing)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch-real", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = prepare_device(args.device)
    torch.manual_seed(0)
    registry = rdd_plugins.get_registry()
    model = registry.create("backbones", "convnet", 1, args.classes, (28, 28), (0.286,), (0.353,),
                            width=args.width).to(device)
    params, loss_fn = trainable_params(model), make_loss_fn(model)
    x = torch.rand(args.classes, args.batch_real, 1, 28, 28, device=device)
    y = torch.arange(args.classes, device=device).view(-1, 1).expand(-1, args.batch_real).contiguous()
    print(f"device {device}, ConvNet width {args.width}, {args.classes} classes x {args.batch_real} real images")
    print(f"{'regularizer':<12} {'loop (s)':>9} {'vmap (s)':>9} {'vmap/loop':>10}")
    for name in ("none", "curvature"):
        reg = registry.create("regularizers", name)
        loop = median_seconds(lambda: real_class_gradients(reg, loss_fn, params, x, y, False), args.repeats, device)
        vmap = median_seconds(lambda: real_class_gradients(reg, loss_fn, params, x, y, True), args.repeats, device)
        print(f"{name:<12} {loop:9.3f} {vmap:9.3f} {vmap / loop:10.2f}")


if __name__ == "__main__":
    main()
