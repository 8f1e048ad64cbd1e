"""Cost of one gradient-matching step, per regularizer, against a straightforward DC-style step.

Rows (all measured in this one run, each in a fresh subprocess so peak memory is its own):
  dc-reference      DC's matching step as its reference code shapes it: classes one at a time,
                    nn.Module forward, torch.autograd.grad (real), create_graph (synthetic)
  gm+none           ours (class batching "auto": vmap on CUDA, loop on CPU)
  gm+curvature      GUARD, finite-difference form (one extra forward-backward at x + z)
  gm+cure           exact CURE (double backprop)
  gm+adversarial    PGD-10 on the real batch before its gradient (adversarial training in the loop)
  dc-code           only with --dc-repo PATH (a clone of VICO-UoE/DatasetCondensation): DC's own
                    ConvNet (networks.py) and match_loss (utils.py), imported from that clone and
                    driven as its main.py drives them; the row also reports the matching loss of
                    DC's code and of ours on the same weights and data, to show they compute the same
  dc-code+rdd-runtime  the same, in a process set up as `rdd distill` sets up its own
                    (rdd_plugins/runtime.py: on a CPU, malloc keeps freed memory), so the table
                    separates what the process set-up gives from what the step itself does
Our rows run in a process set up as `rdd distill`'s; dc-reference and dc-code as plain scripts do.
Times are the median of --repeats matching steps (real targets, synthetic gradients, distance,
backward to the images) after one warm-up; data are random tensors of the setting's shape.
Peak memory: CUDA max_memory_allocated, or the process's peak RSS on CPU.

    python benchmarks/bench_distill.py --setting cpu-quick        # 2 CPU cores: about 2 minutes
    python benchmarks/bench_distill.py --setting dc --device cuda # DC's reference setting on a GPU
    python benchmarks/bench_distill.py --dc-repo ../DatasetCondensation   # adds DC's own code
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

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


def peak_mib(device: torch.device) -> float:
    """CUDA max_memory_allocated, or the process's peak RSS on CPU, in MiB."""
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return peak / 2**20


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


def dc_code_row(dc_repo: str, net, setting: dict, device, real_x, real_y, syn, syn_y, loss_fn, theta):
    """DC's ConvNet and match_loss imported from a clone; returns (step, its loss vs ours)."""
    sys.path.insert(0, dc_repo)
    try:
        from networks import ConvNet  # DC's code, from the user's clone
        from utils import match_loss
    except ImportError as e:
        raise SystemExit(f"--dc-repo {dc_repo}: cannot import DC's networks.py/utils.py ({e})")
    import rdd_plugins
    from rdd_plugins.distillation.matching import matching_losses

    s = setting
    dc_net = ConvNet(s["channels"], s["classes"], s["width"], 3, "relu", "instancenorm", "avgpooling",
                     (s["size"], s["size"])).to(device)
    # Same weights as ours (same layer order; our Normalize layer holds no parameters), so DC's net on
    # normalized images is our net on [0, 1] images.
    with torch.no_grad():
        for mine, theirs in zip(net.parameters(), dc_net.parameters(), strict=True):
            theirs.copy_(mine)
    mean, std = net[0].mean, net[0].std
    dc_real, dc_syn = (real_x - mean) / std, ((syn - mean) / std).detach().requires_grad_(True)
    dc_params = list(dc_net.parameters())
    args = SimpleNamespace(dis_metric="ours", device=device)

    def dc_loss():
        loss = torch.tensor(0.0).to(device)
        for c in range(real_x.shape[0]):  # as DC's main.py: one class at a time
            gw_real = torch.autograd.grad(F.cross_entropy(dc_net(dc_real[c]), real_y[c]), dc_params)
            gw_real = [g.detach().clone() for g in gw_real]
            gw_syn = torch.autograd.grad(F.cross_entropy(dc_net(dc_syn[c]), syn_y[c]), dc_params, create_graph=True)
            loss += match_loss(gw_syn, gw_real, args)
        return loss

    none = rdd_plugins.get_registry().create("regularizers", "none")
    ours = matching_losses(none, loss_fn, theta, real_x, real_y, syn, syn_y, False).sum().item()
    theirs = dc_loss().item()

    def step():
        dc_syn.grad = None
        dc_loss().backward()

    return step, {"dc_code_loss": theirs, "our_loss": ours}


def measure(row: str, setting: str, device_name: str, repeats: int, dc_repo: str | None = None) -> dict:
    import rdd_plugins
    from rdd_plugins.runtime import resolve_device
    from rdd_plugins.distillation.matching import make_loss_fn, matching_losses, trainable_params, use_vmap
    from rdd_plugins.runtime import prepare_device

    s = SETTINGS[setting]
    device = resolve_device(device_name) if row in ("dc-reference", "dc-code") else prepare_device(device_name)
    torch.manual_seed(0)
    registry = rdd_plugins.get_registry()
    net = registry.create("backbones", "convnet", s["channels"], s["classes"], s["size"], (0.5,) * s["channels"],
                          (0.25,) * s["channels"], width=s["width"]).to(device)
    k, b, ipc = s["classes"], s["batch_real"], s["ipc"]
    real_x = torch.rand(k, b, s["channels"], s["size"], s["size"], device=device)
    real_y = torch.arange(k, device=device).view(k, 1).expand(k, b).contiguous()
    syn = torch.rand(k, ipc, s["channels"], s["size"], s["size"], device=device, requires_grad=True)
    syn_y = torch.arange(k, device=device).view(k, 1).expand(k, ipc).contiguous()

    extra = {}
    if row.startswith("dc-code"):
        step, extra = dc_code_row(dc_repo, net, s, device, real_x, real_y, syn, syn_y, make_loss_fn(net),
                                  trainable_params(net))
    elif ROWS[row] is None:
        def step():
            syn.grad = None
            dc_reference_step(net, real_x, real_y, syn, syn_y)
    else:
        name, params = ROWS[row]
        reg = registry.create("regularizers", name, **params)
        loss_fn, theta = make_loss_fn(net), trainable_params(net)
        batched = use_vmap("auto", device)

        def step():
            loss = matching_losses(reg, loss_fn, theta, real_x, real_y, syn, syn_y, batched).sum()
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
    return {"row": row, "median_s": statistics.median(times), "peak_mib": peak_mib(device), "device": str(device),
            **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="cpu-quick")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--dc-repo", help="a clone of VICO-UoE/DatasetCondensation: adds the dc-code row")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.setting, args.device, args.repeats, args.dc_repo)))
        return
    rows = list(args.rows)
    if args.dc_repo:
        rows[:0] = ["dc-code", "dc-code+rdd-runtime"]
    results = {}
    for row in rows:
        cmd = [sys.executable, __file__, "--child", row, "--setting", args.setting,
               "--device", args.device, "--repeats", str(args.repeats)]
        if args.dc_repo:
            cmd += ["--dc-repo", args.dc_repo]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"row {row} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
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
        speed = f"{r['median_s'] / base:.2f}x" if base and row.startswith("dc-") else ""
        print(f"| {row} | {r['median_s']:.3f} | {ratio} | {speed} | {r['peak_mib']:.0f} |")
    if "gm+curvature" in results and "gm+adversarial" in results:
        print(f"adversarial / curvature: {results['gm+adversarial']['median_s'] / results['gm+curvature']['median_s']:.2f}")
    if base and ref:
        print(f"dc-reference / gm+none: {ref / base:.2f}")
    if "dc-code" in results:
        r = results["dc-code"]
        if base:
            print(f"dc-code / gm+none: {r['median_s'] / base:.2f}")
            print(f"dc-code+rdd-runtime / gm+none: {results['dc-code+rdd-runtime']['median_s'] / base:.2f}")
        print(f"matching loss on the same weights and data: DC's code {r['dc_code_loss']:.6f}, "
              f"ours {r['our_loss']:.6f}")


if __name__ == "__main__":
    main()
