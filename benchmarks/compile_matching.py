"""Would torch.compile make the matching step faster? One network, per-class pieces compiled.

Times the matching step of plain `gm` (loss and its gradient w.r.t. the synthetic images, classes
looped as on CPU) eager and with the two per-class pieces compiled by torch.compile (inductor):
the real-batch target gradient, and the synthetic side (gradient of the layer-wise distance w.r.t.
the images, a grad of a grad). Prints the compile time, the medians, the speed-up of each piece and
how far the compiled and the eager float32 image-gradients are from the same step in float64 (eager
float32 is not exact either: instance norm over large maps loses digits in its backward).

    python benchmarks/compile_matching.py [--width 32] [--batch-real 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch.func import grad, grad_and_value

import rdd_plugins
from rdd_plugins.distillation.matching import layerwise_distance, make_loss_fn, matching_losses, trainable_params
from rdd_plugins.runtime import prepare_device


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch-real", type=int, default=64)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    prepare_device("cpu")  # the process set-up `rdd distill` uses
    registry = rdd_plugins.get_registry()
    torch.manual_seed(0)
    net = registry.create("backbones", "convnet", 1, 10, 28, (0.5,), (0.25,), width=args.width)
    loss_fn = make_loss_fn(net)
    params = {k: v.detach() for k, v in trainable_params(net).items()}
    none = registry.create("regularizers", "none")
    k, b, ipc = 10, args.batch_real, args.ipc
    real_x = torch.rand(k, b, 1, 28, 28)
    real_y = torch.arange(k).view(k, 1).expand(k, b).contiguous()
    syn = torch.rand(k, ipc, 1, 28, 28)
    syn_y = torch.arange(k).view(k, 1).expand(k, ipc).contiguous()

    def real_piece(p, x, y):
        return none.parameter_gradient(loss_fn, p, x, y)

    def syn_piece(p, xs, ys, target):
        def distance(images):
            g = grad(loss_fn)(p, images, ys)
            return layerwise_distance({n: t.unsqueeze(0) for n, t in target.items()},
                                      {n: t.unsqueeze(0) for n, t in g.items()})

        g_images, value = grad_and_value(distance)(xs)
        return value, g_images

    real_c, syn_c = torch.compile(real_piece), torch.compile(syn_piece)

    def compiled_step():
        total, grads = 0.0, []
        for c in range(k):
            value, g = syn_c(params, syn[c], syn_y[c], real_c(params, real_x[c], real_y[c]))
            total = total + value
            grads.append(g)
        return total, torch.stack(grads)

    def eager_step(loss_fn=loss_fn, params=params, real_x=real_x, syn=syn):
        images = syn.clone().requires_grad_(True)
        loss = matching_losses(none, loss_fn, params, real_x, real_y, images, syn_y, False).sum()
        (g,) = torch.autograd.grad(loss, images)
        return loss, g

    net64 = copy.deepcopy(net).double()
    params64 = {n: v.detach() for n, v in trainable_params(net64).items()}

    t0 = time.perf_counter()
    loss_c, grad_c = compiled_step()
    compile_s = time.perf_counter() - t0
    loss_e, grad_e = eager_step()
    loss_64, grad_64 = eager_step(make_loss_fn(net64), params64, real_x.double(), syn.double())
    targets = [real_piece(params, real_x[c], real_y[c]) for c in range(k)]
    rows = {
        "step": (median_seconds(eager_step, args.repeats), median_seconds(compiled_step, args.repeats)),
        "real side": (median_seconds(lambda: [real_piece(params, real_x[c], real_y[c]) for c in range(k)], args.repeats),
                      median_seconds(lambda: [real_c(params, real_x[c], real_y[c]) for c in range(k)], args.repeats)),
        "synthetic side": (
            median_seconds(lambda: [syn_piece(params, syn[c], syn_y[c], targets[c]) for c in range(k)], args.repeats),
            median_seconds(lambda: [syn_c(params, syn[c], syn_y[c], targets[c]) for c in range(k)], args.repeats)),
    }
    print(f"ConvNet width {args.width}, 10 classes x batch_real {b}, IPC {ipc}, cpu, "
          f"{torch.get_num_threads()} threads; first compiled step (compiling) {compile_s:.1f} s")
    print("| piece | eager (s) | compiled (s) | speed-up |")
    print("|---|---|---|---|")
    for name, (eager, compiled) in rows.items():
        print(f"| {name} | {eager:.4f} | {compiled:.4f} | {eager / compiled:.2f}x |")

    def off(g):
        return ((g.double() - grad_64).norm() / grad_64.norm()).item()

    print(f"matching loss float64 {loss_64.item():.6f}, eager {loss_e.item():.6f}, compiled {loss_c.item():.6f}")
    between = ((grad_c - grad_e).norm() / grad_e.norm()).item()
    print(f"image-gradient relative difference: compiled vs eager {between:.1e}; "
          f"from float64: eager {off(grad_e):.1e}, compiled {off(grad_c):.1e}")


if __name__ == "__main__":
    main()
