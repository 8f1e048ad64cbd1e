"""What several ranks buy: one `gm` iteration, one `sre2l` recover pass and one evaluation, timed at
1, 2, ... ranks, with the bytes the ranks exchange.

Each rank count is a fresh `torchrun --standalone` launch of this script in worker mode (gloo on a
CPU, NCCL on GPUs). A worker runs the quickstart's CPU-sized settings on Fashion-MNIST (width-32
ConvNet, IPC 10; `gm`+curvature with (outer, inner) = (10, 10) and batch_real 64; `sre2l`+curvature
with a 1-epoch teacher and `recover_batch` 25, i.e. 5 recover batches of 20 images; an evaluation of
2 models trained 50 epochs and attacked with PGD-10 at 8/255 on 500 test points) and reports:

* `gm s/iter`, `sre2l s/recover`: the loop's own timing of the second iteration (the first warms up);
* `evaluate s`: the wall time of `evaluate_set` (training both models and attacking them);
* the bytes every rank sent through torch.distributed per `gm` outer step, per recover pass and per
  evaluation (counted by wrapping the collectives: payload bytes, not the transport's framing).

Every rank count must give the same sets and numbers; the script checks the set digests and the
evaluation table against the 1-rank run and says so.

    python benchmarks/bench_scaling.py                       # 1 and 2 ranks on the CPU
    python benchmarks/bench_scaling.py --ranks 1 2 4 8 --device cuda

Run it alone: a second busy process on a 2-core machine doubles every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTING = {
    "seed": 0,
    "data": {"dataset": "fashion-mnist"},
    "backbone": {"name": "convnet", "params": {"width": 32}},
    "distill": {"ipc": 10, "iterations": 2, "distiller": "gm", "regularizer": "curvature",
                "regularizer_params": {"h": 1.0, "lam": 0.3},
                "params": {"batch_real": 64, "outer_loop": 10, "inner_loop": 10}},
    "evaluate": {"seeds": 2, "epochs": 50, "n_test": 500, "attack": "pgd", "attack_params": {"steps": 10},
                 "eps": ["8/255"]},
}
SRE2L = {"backbone": {"name": "convnet", "params": {"width": 32, "norm": "batch"}},
         "distill": {"distiller": "sre2l", "iterations": 2, "regularizer": "curvature",
                     "regularizer_params": {"h": 1.0, "lam": 1.0},
                     "params": {"teacher_epochs": 1, "recover_batch": 25, "relabel_crops": 10}}}


class ByteCounter:
    """Wraps torch.distributed's collectives and counts the payload bytes this rank hands them."""

    WRAPPED = ("all_reduce", "all_gather", "broadcast", "all_gather_object", "broadcast_object_list")

    def __init__(self) -> None:
        import torch.distributed as dist

        self.bytes = 0
        for name in self.WRAPPED:
            setattr(dist, name, self._counting(name, getattr(dist, name)))

    def _counting(self, name, collective):
        import pickle

        import torch

        def counted(obj, *args, **kwargs):
            if isinstance(obj, torch.Tensor):
                self.bytes += obj.numel() * obj.element_size()
            elif name == "all_gather":  # (output list, input tensor)
                tensor = args[0]
                self.bytes += tensor.numel() * tensor.element_size()
            elif name == "all_gather_object":  # (output list, obj): the pickled object is sent
                self.bytes += len(pickle.dumps(args[0]))
            elif name == "broadcast_object_list":
                self.bytes += len(pickle.dumps(obj))
            return collective(obj, *args, **kwargs)

        return counted

    def take(self) -> int:
        taken, self.bytes = self.bytes, 0
        return taken


def worker(out: Path, device: str) -> None:
    import torch

    import rdd_plugins
    from rdd_plugins.config import merge
    from rdd_plugins.distributed.world import start_world, stop_world
    from rdd_plugins.evaluation.pipeline import evaluate_set
    from rdd_plugins.evaluation.seed_cache import set_digest
    from rdd_plugins.plugins import get_registry
    from rdd_plugins.run.settings import run_config

    from rdd_plugins.plugins import register_plugin

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    world = start_world()
    counter = ByteCounter()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_iteration import IterationTimer  # each iteration's seconds, from the loop's hook (rank 0)

    timer = IterationTimer()
    register_plugin(timer, "bench-scaling-timer")
    figures = {"ranks": world.size, "timings": {}}
    gm_cfg = run_config(merge(SETTING, {"device": device}))
    counter.take()
    gm = rdd_plugins.distill(gm_cfg, progress=False)
    outer = SETTING["distill"]["params"]["outer_loop"]
    figures["timings"]["gm"] = timer.seconds[-1] if timer.seconds else None
    figures["gm_bytes_per_outer_step"] = counter.take() / (SETTING["distill"]["iterations"] * outer)
    timer.seconds.clear()
    sre2l = rdd_plugins.distill(run_config(merge(merge(SETTING, SRE2L), {"device": device})), progress=False)
    figures["timings"]["sre2l"] = timer.seconds[-1] if timer.seconds else None
    figures["sre2l_bytes_per_run"] = counter.take()
    t0 = time.perf_counter()
    rows = evaluate_set(gm, gm_cfg, get_registry(), progress=False)
    figures["evaluate_seconds"] = round(time.perf_counter() - t0, 2)
    figures["evaluate_bytes"] = counter.take()
    figures["gm_digest"], figures["sre2l_digest"] = set_digest(gm), set_digest(sre2l)
    figures["table"] = [{"clean": r["summary"]["clean"], "worst": r["summary"]["worst"]} for r in rows]
    if world.is_main:
        out.write_text(json.dumps(figures))
    stop_world()


def launch(ranks: int, device: str, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "figures.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GLOO_SOCKET_IFNAME": "lo", "RDD_NO_PROGRESS": "1"}
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                        "--rdzv-endpoint=127.0.0.1:0", __file__, "--worker", str(out), "--device", device],
                       env=env, check=True)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1, help="threads per rank (OMP_NUM_THREADS)")
    parser.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker), args.device)
        return
    results = [launch(n, args.device, args.threads) for n in args.ranks]
    base = results[0]
    print(f"{'ranks':>5} | {'gm s/iter':>9} | {'sre2l s/recover':>15} | {'evaluate s':>10} | "
          f"{'gm MB/outer step':>16} | {'sre2l MB/run':>12} | {'eval MB':>7} | same as {base['ranks']} rank(s)")
    for r in results:
        same = (r["gm_digest"], r["sre2l_digest"], r["table"]) == (base["gm_digest"], base["sre2l_digest"], base["table"])
        print(f"{r['ranks']:>5} | {r['timings']['gm']:>9.2f} | {r['timings']['sre2l']:>15.3f} | "
              f"{r['evaluate_seconds']:>10.1f} | {r['gm_bytes_per_outer_step'] / 1e6:>16.3f} | "
              f"{r['sre2l_bytes_per_run'] / 1e6:>12.2f} | {r['evaluate_bytes'] / 1e6:>7.2f} | {'yes' if same else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
