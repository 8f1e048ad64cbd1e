"""Cost of one gradient-matching step, per regularizer, against a straightforward DC-style step.

Rows (all measured in this one run, each in a fresh subprocess so peak memory is its own):
  dc-reference      DC's matching step as its reference code shapes it: classes one at a time,
                    nn.Module forward, torch.autograd.grad (real), create_graph (synthetic)
  gm+none           ours (class batching "auto": vmap on CUDA, loop on CPU)
  gm+curvature      GUARD, finite-difference form (one extra forward-backward at x + z)
  gm+cure           exact CURE (double backprop)
  gm+adversarial    PGD-10 on the real batch before its gradient (adversarial training in the loop)
Times are the median of --repeats matching steps (real targets, synthetic gradients, distance,
backward to the images) after one warm-up; data are random tensors of the setting's shape.
Peak memory: CUDA max_memory_allocated, or the process's peak RSS on CPU.

    python benchmarks/bench_distill.py --setting cpu-quick        # 2 CPU cores: about 2 minutes
    python benchmarks/bench_distill.py --setting dc --device cuda # DC's reference setting on a GPU
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
import torch.nn.functional as F

SETTINGS = {
    # DC's reference: Fashion-MNIST shape, ConvNet width 128, instance norm, batch_real 256, IPC 10.
    "dc": {"width": 128, "batch_real": 256, "ipc": 10, "classes": 10, "channels": 1, "size": 28},
    # What the quickstart runs on 2 CPU cores.
    "cpu-quick": {"width": 32, "batch_real": 64, "ipc": 10, "classes": 10, "channels": 1, "size": 28},
}
ROWS = {
    "dc-reference": None,
    "gm+none": ("none", {}),
    "gm+curvature": ("curvature", {}),
    "gm+cure": ("cure", {}),
    "gm+adversarial": ("adversarial", {"steps": 10}),
}


def dc_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """DC's 'ours' distance for one parameter, written from its definition."""
    if a.dim() == 1:
        return torch.zeros((), device=a.device)
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return torch.sum(1 - torch.sum(a * b, -1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6))


def dc_reference_step(net, real_x, real_y, syn, syn_y) -> None:
    params = list(net.parameters())
    loss = torch.zeros((), device=syn.device)
    for c in range(real_x.shape[0]):
        g_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(real_x[c]), real_y[c]), params)]
        g_syn = torch.autograd.grad(F.cross_entropy(net(syn[c]), syn_y[c]), params, create_graph=True)
        loss = loss + sum(dc_distance(s, r) for s, r in zip(g_syn, g_real))
    loss.backward()


def measure(row: str, setting: str, device_name: str, repeats: int) -> dict:
    import rdd_plugins
    from rdd_plugins.config import resolve_device
    from rdd_plugins.distillation.matching import make_loss_fn, matching_loss, trainable_params, use_vmap

    s = SETTINGS[setting]
    device = resolve_device(device_name)
    torch.manual_seed(0)
    registry = rdd_plugins.get_registry()
    net = registry.create("backbones", "convnet", s["channels"], s["classes"], s["size"], (0.5,) * s["channels"],
                          (0.25,) * s["channels"], width=s["width"]).to(device)
    k, b, ipc = s["classes"], s["batch_real"], s["ipc"]
    real_x = torch.rand(k, b, s["channels"], s["size"], s["size"], device=device)
    real_y = torch.arange(k, device=device).view(k, 1).expand(k, b).contiguous()
    syn = torch.rand(k, ipc, s["channels"], s["size"], s["size"], device=device, requires_grad=True)
    syn_y = torch.arange(k, device=device).view(k, 1).expand(k, ipc).contiguous()

    if ROWS[row] is None:
        def step():
            syn.grad = None
            dc_reference_step(net, real_x, real_y, syn, syn_y)
    else:
        name, params = ROWS[row]
        reg = registry.create("regularizers", name, **params)
        loss_fn, theta = make_loss_fn(net), trainable_params(net)
        batched = use_vmap("auto", device)

        def step():
            loss = matching_loss(reg, loss_fn, theta, real_x, real_y, syn, syn_y, batched)
            torch.autograd.grad(loss, syn)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"row": row, "median_s": statistics.median(times), "peak_mib": peak / 2**20, "device": str(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="cpu-quick")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.setting, args.device, args.repeats)))
        return
    results = {}
    for row in args.rows:
        out = subprocess.run([sys.executable, __file__, "--child", row, "--setting", args.setting,
                              "--device", args.device, "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True)
        results[row] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results.get("gm+none", {}).get("median_s")
    ref = results.get("dc-reference", {}).get("median_s")
    s = SETTINGS[args.setting]
    device = next(iter(results.values()))["device"]
    print(f"setting {args.setting}: ConvNet width {s['width']}, {s['classes']} classes x batch_real "
          f"{s['batch_real']}, IPC {s['ipc']}, device {device}, median of {args.repeats}")
    print("| row | s / matching step | x gm+none | gm+none speed-up vs row | peak MiB |")
    print("|---|---|---|---|---|")
    for row, r in results.items():
        ratio = f"{r['median_s'] / base:.2f}" if base else "-"
        speed = f"{r['median_s'] / base:.2f}x" if base and row == "dc-reference" else ""
        print(f"| {row} | {r['median_s']:.3f} | {ratio} | {speed} | {r['peak_mib']:.0f} |")
    if "gm+curvature" in results and "gm+adversarial" in results:
        print(f"adversarial / curvature: {results['gm+adversarial']['median_s'] / results['gm+curvature']['median_s']:.2f}")
    if base and ref:
        print(f"dc-reference / gm+none: {ref / base:.2f}")


if __name__ == "__main__":
    main()
