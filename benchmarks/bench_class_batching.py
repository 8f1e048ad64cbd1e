"""vmap over classes vs a Python loop over classes, for the real-gradient targets of one matching step.

Prints, per regularizer, the median time and the peak memory of the loop, of vmap over all classes
and of vmap over chunks of classes (`--chunks`, gm's `class_chunk`). Each row runs in a process of
its own, so that its peak is its own: on CUDA max_memory_allocated, on a CPU the growth of the peak
resident size over the set-up. `gm`'s default `class_batching="auto"` takes vmap on CUDA and the
loop on CPU because of these figures; rerun on your hardware to check.

    python benchmarks/bench_class_batching.py [--device cpu] [--width 32] [--batch-real 64]
        [--classes 10] [--chunks 1 5] [--regularizers none curvature cure] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
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


def memory_mark(device: torch.device) -> int:
    """Bytes in use now; the peak is then measured from here."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_row(args, regularizer: str, batching: str, chunk: int | None) -> dict:
    """One row, in this process: seconds per call and the peak above the set-up, in MiB."""
    device = prepare_device(args.device)
    torch.manual_seed(0)
    registry = rdd_plugins.get_registry()
    model = registry.create("backbones", "convnet", 1, args.classes, (28, 28), (0.286,), (0.353,),
                            width=args.width).to(device)
    params, loss_fn = trainable_params(model), make_loss_fn(model)
    x = torch.rand(args.classes, args.batch_real, 1, 28, 28, device=device)
    y = torch.arange(args.classes, device=device).view(-1, 1).expand(-1, args.batch_real).contiguous()
    reg = registry.create("regularizers", regularizer)
    batched = batching != "loop"
    before = memory_mark(device)
    seconds = median_seconds(lambda: real_class_gradients(reg, loss_fn, params, x, y, batched, chunk),
                             args.repeats, device)
    return {"seconds": seconds, "peak_mib": (peak_bytes(device) - before) / 2**20, "device": str(device)}


def run_row_in_child(regularizer: str, batching: str, chunk: int | None) -> dict:
    row = f"{regularizer}:{batching}:{chunk or 0}"
    done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--row", row],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch-real", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--chunks", type=int, nargs="*", default=[1, 5], help="classes per vmap call")
    ap.add_argument("--regularizers", nargs="+", default=["none", "curvature"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--row", help=argparse.SUPPRESS)  # REG:BATCHING:CHUNK, run by the parent
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.row:
        regularizer, batching, chunk = args.row.split(":")
        print(json.dumps(measure_row(args, regularizer, batching, int(chunk) or None)))
        return
    rows = [("loop", None), ("vmap", None)] + [("vmap", c) for c in args.chunks]
    print(f"ConvNet width {args.width}, {args.classes} classes x {args.batch_real} real images")
    print(f"{'regularizer':<12} {'batching':<14} {'seconds':>8} {'x loop':>7} {'peak MiB':>9}")
    for name in args.regularizers:
        loop_seconds = None
        for batching, chunk in rows:
            got = run_row_in_child(name, batching, chunk)
            loop_seconds = loop_seconds or got["seconds"]
            label = batching if chunk is None else f"vmap chunk {chunk}"
            print(f"{name:<12} {label:<14} {got['seconds']:8.3f} {got['seconds'] / loop_seconds:7.2f} "
                  f"{got['peak_mib']:9.0f}   ({got['device']})", flush=True)


if __name__ == "__main__":
    main()
