"""One-shot GPU check (issue #18): every step a subprocess under its own time cap, one table at the
end, everything in OUT/gpu_check.json.

    bash benchmarks/gpu_wheels.sh      # here, once: gpu-wheels/ and gpu-data/ (ignored folders)
    bash benchmarks/gpu_check.sh --out OUT --wheels gpu-wheels --data-root gpu-data --dc-repo dc-reference
    bash benchmarks/gpu_check.sh --rehearse --out /tmp/gpu-check    # every step on CPU, tiny sizes

Steps, with their caps on the GPU (they add up to 540 s = 9 minutes; --rehearse has its own):
  setup                      40 s  imports torch first (is CUDA there?), then installs the wheels of
                                   --wheels and this package into WORK/site, offline, and checks
                                   that everything imports; the machine's own torch is used
  tests                      65 s  the test suite's CUDA-relevant files (--device cuda where
                                   tests/conftest.py offers that option; pytest-xdist where present)
  bench-distill-dc           55 s  bench_distill.py --setting dc: DC's step shape, ours, and DC's own
                                   code from --dc-repo side by side (without it: a note, no DC rows)
  bench-distill-regularizers 65 s  bench_distill.py --setting dc: gm with each regularizer
  bench-class-batching       55 s  bench_class_batching.py at DC's width 128, batch_real 256: loop,
                                   vmap, vmap in chunks of 5 classes
  gm-distill                180 s  `rdd distill` gm in DC's Fashion-MNIST IPC 10 setting, 253 iterations
                                   asked; at its time budget it gets Ctrl-C, finishes the iteration,
                                   saves the set and a checkpoint (a later run can --resume to 253)
  gm-evaluate                80 s  `rdd evaluate` on that set: 3 ConvNets, PGD-20 at 2/4/8/255, each
                                   eps on the whole test split (no cascade), DC's protocol

A step that reaches its cap gets SIGINT (pytest then prints its counts, rdd stops cleanly), then
SIGKILL for its whole process group; the table says how far it got. The figures are set against
DC's own code on an H100 (shared/PERFORMANCE-NOTES.md). OUT receives gpu_check.json, gpu_check.log
(every step's output) and gm-run/ (the set, its checkpoint, the evaluation's results.json): 7 files,
within what a device run returns. Standard library only, so that the table and the JSON are
written even where torch does not import.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"

# DC's own code (VICO-UoE/DatasetCondensation) on an NVIDIA H100, shared/PERFORMANCE-NOTES.md.
DC_REFERENCE = {
    "gpu": "NVIDIA H100, torch 2.11",
    "seconds_per_iteration": 3.73,  # median of 251 outer iterations, Fashion-MNIST IPC 10
    "iterations": 253,
    "clean": [81.52, 0.11],
    "pgd20": {"2/255": [77.39, 0.07], "4/255": [73.20, 0.18], "8/255": [63.35, 0.26]},
    # 10 matching steps per outer iteration: classes in a Python loop 1.6 s, vmapped 0.51 s
    "matching_step_loop_s": 0.16,
    "matching_step_vmap_s": 0.051,
}
EPS = ["2/255", "4/255", "8/255"]
DC_ITERATIONS = 253

# The files most likely to break on another torch or on CUDA: devices and numerics, the vmap path
# and its class chunks, autodiff, regularizers, distillers, attacks and evaluation. Those not in
# the tree are left out. test_resume.py (5 minutes of CPU-only SIGKILL round trips) stays out.
CUDA_TEST_FILES = ["tests/test_runtime.py", "tests/test_gpu_ready.py", "tests/test_autodiff.py",
                   "tests/test_matching.py", "tests/test_class_chunks.py", "tests/test_regularizers.py",
                   "tests/test_distillers.py", "tests/test_attacks.py", "tests/test_evaluation.py"]
REGULARIZER_ROWS = ["gm+none", "gm+curvature", "gm+cure", "gm+adversarial"]
PROBE_MARK = "GPU_CHECK_PROBE "


@dataclass
class Sizes:
    """What differs between the GPU run and its CPU rehearsal; the commands are the same."""

    device: str
    caps: dict[str, float]
    test_files: list[str]
    bench_setting: str
    bench_repeats: int
    batching: list[str]  # bench_class_batching.py's size flags
    dataset: list[str]  # rdd distill's dataset and size flags
    distill_iterations: int
    evaluate: list[str]  # rdd evaluate's size flags


GPU_SIZES = Sizes(
    device="cuda",
    caps={"setup": 40, "tests": 65, "bench-distill-dc": 55, "bench-distill-regularizers": 65,
          "bench-class-batching": 55, "gm-distill": 180, "gm-evaluate": 80},
    test_files=CUDA_TEST_FILES,
    bench_setting="dc", bench_repeats=5,
    # a process per row (about 6 s of imports and CUDA set-up each): loop, vmap, chunks of 5 classes
    batching=["--width", "128", "--batch-real", "256", "--repeats", "5", "--chunks", "5"],
    dataset=["--dataset", "fashion-mnist"],  # DC's defaults: width 128, batch_real 256, loops (10, 50)
    distill_iterations=DC_ITERATIONS,
    evaluate=["--seeds", "3", "--epochs", "300", "--n-test", "0"],
)
REHEARSAL_SIZES = Sizes(
    device="cpu",
    caps={"setup": 90, "tests": 40, "bench-distill-dc": 45, "bench-distill-regularizers": 60,
          "bench-class-batching": 30, "gm-distill": 30, "gm-evaluate": 30},
    test_files=["tests/test_autodiff.py"],
    bench_setting="cpu-quick", bench_repeats=1,
    batching=["--width", "8", "--batch-real", "16", "--repeats", "1", "--chunks", "5", "--regularizers", "none"],
    dataset=["--dataset", "synthetic", "--set", "backbone.params.width=8", "--set", "distill.params.outer_loop=2",
             "--set", "distill.params.inner_loop=2", "--set", "distill.params.batch_real=16"],
    # far more than fit: the rehearsal must end the way the GPU run will, stopped by its budget
    distill_iterations=100_000,
    evaluate=["--seeds", "1", "--epochs", "2", "--n-test", "50"],
)
# Seconds before the cap at which a step is asked to stop (SIGINT); the distillation needs one
# iteration (3.73 s in DC's code) and its saves.
GRACE = {"gm-distill": 20}
DEFAULT_GRACE = 5


@dataclass
class Step:
    name: str
    argv: list[str]
    cap: float
    figures: Callable[["Step", "Outcome"], dict] = lambda step, outcome: {}
    needs: list[str] = field(default_factory=list)
    # The distillation: being stopped at its budget is how it is meant to end, not a failure...
    budget_is_normal: bool = False
    # ...but only once it can stop cleanly (its first checkpoint exists); before, SIGINT would lose all.
    ready: Callable[[], bool] | None = None
    note: str = ""  # what the step leaves out (a missing optional input), shown with its status


@dataclass
class Outcome:
    status: str = "not run"
    ok: bool = False
    rc: int | None = None
    seconds: float = 0.0
    stopped_at_cap: bool = False
    killed: bool = False
    figures: dict = field(default_factory=dict)
    tail: str = ""  # the log's last lines, for the JSON
    output: str = ""  # the whole log, for the parsers (warnings can push a table out of the tail)


# --- running one step -----------------------------------------------------------------------------

def run_capped(step: Step, log_path: Path, env: dict) -> Outcome:
    """Run ``step`` in its own process group: SIGINT at cap - grace (when ready), SIGKILL at cap."""
    grace = GRACE.get(step.name, DEFAULT_GRACE)
    outcome = Outcome()
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(step.argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            outcome.rc = _wait(proc, step.cap - grace)
            if outcome.rc is None:
                _wait_until_ready(proc, step, start)
                outcome.stopped_at_cap = _signal_group(proc, signal.SIGINT)
                outcome.rc = _wait(proc, step.cap - (time.monotonic() - start))
            if outcome.rc is None:
                outcome.killed = _signal_group(proc, signal.SIGKILL)
                outcome.rc = proc.wait()
        finally:
            # Whatever of the group is left (the driver interrupted, a benchmark's child orphaned)
            # would hold the GPU during the next step.
            _signal_group(proc, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait()
    outcome.seconds = round(time.monotonic() - start, 1)
    outcome.output = log_path.read_text(errors="replace") if log_path.exists() else ""
    outcome.tail = tail_of(outcome.output)
    return outcome


def _wait(proc: subprocess.Popen, seconds: float) -> int | None:
    try:
        return proc.wait(timeout=max(seconds, 0))
    except subprocess.TimeoutExpired:
        return None


def _wait_until_ready(proc: subprocess.Popen, step: Step, start: float) -> None:
    while step.ready and not step.ready() and proc.poll() is None and time.monotonic() - start < step.cap:
        time.sleep(0.5)


def _signal_group(proc: subprocess.Popen, sig: int) -> bool:
    try:
        os.killpg(proc.pid, sig)
        return True
    except ProcessLookupError:
        return False


def tail_of(text: str, lines: int = 25) -> str:
    # progress bars redraw with carriage returns; only their last state is worth keeping
    kept = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(kept[-lines:])


def judge(step: Step, outcome: Outcome) -> None:
    """Status in words: ok, failed (rc N), or capped after N s (with how far it got in figures)."""
    if step.budget_is_normal and outcome.figures.get("set_saved"):
        outcome.ok = True
        outcome.status = "ok" if not outcome.stopped_at_cap else f"ok (stopped by its {step.cap:.0f} s budget)"
    elif outcome.killed or outcome.stopped_at_cap:
        outcome.status = f"capped after {outcome.seconds:.0f} s"
    elif outcome.rc == 0:
        outcome.ok = True
        outcome.status = f"ok ({step.note})" if step.note else "ok"
    else:
        outcome.status = f"failed (rc {outcome.rc})"


# --- figures each step prints or writes -------------------------------------------------------------

def setup_figures(step: Step, outcome: Outcome) -> dict:
    for line in reversed(outcome.output.splitlines()):
        if line.startswith(PROBE_MARK):
            return json.loads(line[len(PROBE_MARK):])
    return {}


def pytest_figures(step: Step, outcome: Outcome) -> dict:
    counts = {}
    for line in reversed(outcome.output.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)", line)
        if found:
            counts = {word.rstrip("s") if word.startswith("error") else word: int(n) for n, word in found}
            break
    return {"counts": counts, "device_option": "--device" in step.argv}


def bench_distill_figures(step: Step, outcome: Outcome) -> dict:
    """Seconds per matching step by row, and DC's loss against ours on the same weights."""
    rows = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| (\S+) \| ([\d.]+) \|", outcome.output, re.M)}
    figures: dict = {"seconds_per_step": rows}
    loss = re.search(r"DC's code ([-\d.]+), ours ([-\d.]+)", outcome.output)
    if loss:
        figures["matching_loss"] = {"dc_code": float(loss.group(1)), "ours": float(loss.group(2))}
    note = re.search(r"^setting .*$", outcome.output, re.M)
    if note:
        figures["setting"] = note.group(0)
    return figures


def class_batching_figures(step: Step, outcome: Outcome) -> dict:
    """Seconds and peak MiB per (regularizer, batching) row, e.g. ("none", "vmap chunk 5")."""
    rows: dict = {}
    for m in re.finditer(r"^(\S+)\s+(loop|vmap(?: chunk \d+)?)\s+([\d.]+)\s+[\d.]+\s+(-?[\d.]+)", outcome.output, re.M):
        rows.setdefault(m.group(1), {})[m.group(2)] = {"seconds": float(m.group(3)), "peak_mib": float(m.group(4))}
    return {"rows": rows}


def distill_figures(run_dir: Path) -> Callable[[Step, Outcome], dict]:
    def figures(step: Step, outcome: Outcome) -> dict:
        meta = read_json(run_dir / "meta.json")
        if not meta:
            return {"set_saved": False}
        history = read_json(run_dir / "history.json").get("history", [])
        seconds = [h["seconds"] for h in history]
        return {
            "set_saved": True,
            "completed_iterations": meta.get("completed_iterations"),
            "iterations": meta.get("iterations"),
            "interrupted": meta.get("interrupted"),
            "seconds_per_iteration_median": round(statistics.median(seconds), 3) if seconds else None,
            "seconds_per_iteration": seconds,
            "run_seconds": meta.get("seconds"),
            "device": meta.get("device"),
        }
    return figures


def evaluate_figures(eval_dir: Path) -> Callable[[Step, Outcome], dict]:
    """From results.json; a capped evaluation still has its finished models under seeds/."""
    def figures(step: Step, outcome: Outcome) -> dict:
        rows = read_json(eval_dir / "results.json").get("results") or []
        if rows:
            return summary_figures(rows[0])
        per_seed = [read_json(p).get("result") for p in sorted((eval_dir / "seeds").glob("*.json"))]
        return seed_figures([r for r in per_seed if r], partial=True)
    return figures


def summary_figures(row: dict) -> dict:
    summary = row["summary"]
    pgd = summary["attacks"].get("pgd", {})
    return {
        "models": row["evaluation"]["seeds"],
        "n_test": row["evaluation"]["n_test"],
        "set_iterations": row["set"].get("completed_iterations"),
        "clean": [summary["clean"]["mean"], summary["clean"]["std"]],
        "pgd20": {e: [v["robust"]["mean"], v["robust"]["std"]] for e, v in pgd.items()},
    }


def seed_figures(per_seed: list[dict], partial: bool) -> dict:
    if not per_seed:
        return {"models": 0, "partial": partial}

    def mean_std(fractions: list[float]) -> list[float]:
        # as results.json has them: percent, std with ddof=0 over models (DC's way)
        return [round(100 * statistics.mean(fractions), 3), round(100 * statistics.pstdev(fractions), 3)]

    pgd = [r["attacks"].get("pgd", {}) for r in per_seed]
    return {"models": len(per_seed), "partial": partial,
            "clean": mean_std([r["clean"] for r in per_seed]),
            "pgd20": {e: mean_std([p[e]["robust"] for p in pgd]) for e in pgd[0]}}


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {"results": value}


# --- the plan ---------------------------------------------------------------------------------------

def plan(args: argparse.Namespace, sizes: Sizes, work: Path) -> list[Step]:
    py = sys.executable
    caps = sizes.caps
    run_dir, eval_dir = work / "gm-run", work / "gm-evaluation"
    rdd = [py, "-m", "rdd_plugins.cli"]
    data_root = ["--data-root", str(Path(args.data_root).resolve())] if args.data_root else []
    bench = [py, str(BENCH / "bench_distill.py"), "--setting", sizes.bench_setting, "--device", sizes.device,
             "--repeats", str(sizes.bench_repeats)]
    dc_note = dc_repo_problem(args.dc_repo)
    dc_repo = [] if dc_note else ["--dc-repo", str(Path(args.dc_repo).resolve())]
    steps = [
        Step("setup", setup_argv(args, sizes, work), caps["setup"], setup_figures),
        Step("tests", pytest_argv(sizes), caps["tests"], pytest_figures, needs=["setup"]),
        Step("bench-distill-dc", bench + ["--rows", "dc-reference", "gm+none", *dc_repo],
             caps["bench-distill-dc"], bench_distill_figures, needs=["setup"], note=dc_note),
        Step("bench-distill-regularizers", bench + ["--rows", *REGULARIZER_ROWS], caps["bench-distill-regularizers"],
             bench_distill_figures, needs=["setup"]),
        Step("bench-class-batching", [py, str(BENCH / "bench_class_batching.py"), "--device", sizes.device,
                                      *sizes.batching], caps["bench-class-batching"], class_batching_figures,
             needs=["setup"]),
        Step("gm-distill", rdd + ["distill", *sizes.dataset, "--ipc", "10", "--distiller", "gm", "--regularizer",
                                  "none", "--iterations", str(sizes.distill_iterations), "--device", sizes.device,
                                  "--out", str(run_dir), "--no-progress", *data_root],
             caps["gm-distill"], distill_figures(run_dir), needs=["setup"], budget_is_normal=True,
             ready=lambda: (run_dir / "checkpoint.safetensors").exists()),
        Step("gm-evaluate", rdd + ["evaluate", str(run_dir), *sizes.evaluate, "--attack", "pgd", "--eps", *EPS,
                                   "--no-cascade", "--set", "evaluate.attack_params.steps=20", "--device",
                                   sizes.device, "--out", str(eval_dir), "--no-progress", *data_root],
             caps["gm-evaluate"], evaluate_figures(eval_dir), needs=["setup", "gm-distill"]),
    ]
    return steps


def dc_repo_problem(dc_repo: str | None) -> str:
    """Why DC's own code cannot run beside ours ("" when it can); its rows are then left out."""
    if not dc_repo:
        return "DC's own code not run: no --dc-repo"
    if not (Path(dc_repo) / "networks.py").is_file() or not (Path(dc_repo) / "utils.py").is_file():
        return f"DC's own code not run: {dc_repo} has no networks.py and utils.py"
    return ""


def setup_argv(args: argparse.Namespace, sizes: Sizes, work: Path) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--setup-step", "--device", sizes.device,
            "--work", str(work)]
    if args.wheels:
        argv += ["--wheels", str(Path(args.wheels).resolve())]
    return argv


def pytest_argv(sizes: Sizes) -> list[str]:
    files = [f for f in sizes.test_files if (REPO / f).exists()]
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *files]
    if conftest_has_device_option():
        argv += ["--device", sizes.device]
    if sizes.device == "cuda" and has_module("xdist"):
        argv += ["-n", "8"]  # the GPU machine has 16 cores; these CPU-side tests parallelize
    return argv


def conftest_has_device_option() -> bool:
    """Only tests/conftest.py can say where the suite runs; until it offers --device, it runs on CPU."""
    conftest = REPO / "tests" / "conftest.py"
    return conftest.exists() and re.search(r"addoption\(\s*[\"']--device[\"']", conftest.read_text()) is not None


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# --- the setup step (runs as its own subprocess) ------------------------------------------------------

PROBE = r"""
import importlib.metadata as md, json, platform, sys
info = {"python": platform.python_version()}
import torch
info.update(torch=torch.__version__, cuda=torch.cuda.is_available(),
            gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
import torchvision, torchattacks, timm, pluggy, safetensors, tomli_w, pkg_resources  # pkg_resources: robustbench
import rdd_plugins, rdd_integrations
datasets = {e["name"] for e in rdd_plugins.get_registry().as_dict()["datasets"]}
assert "fashion-mnist" in datasets, f"fashion-mnist is not registered (entry points missing?): {sorted(datasets)}"
for name in ("torchvision", "torchattacks", "robustbench", "timm", "pluggy", "safetensors", "setuptools",
             "rdd-plugins"):
    info[name] = md.version(name)
print("GPU_CHECK_PROBE " + json.dumps(info))
"""


def setup_step(args: argparse.Namespace) -> int:
    """torch first (the one thing not carried), then the wheels and this package into WORK/site."""
    torch_check = subprocess.run([sys.executable, "-c", "import torch; print('torch', torch.__version__, "
                                  "'cuda available:', torch.cuda.is_available())"])
    if torch_check.returncode != 0:
        print("setup: this Python has no torch; the GPU check uses the machine's own torch", flush=True)
        return 3
    env = dict(os.environ)
    if args.wheels:
        site = Path(args.work) / "site"
        install_wheels(Path(args.wheels), site)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(site), env.get("PYTHONPATH")]))
        install_this_package(site, env)
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True)
    print(probe.stdout + probe.stderr, end="", flush=True)
    if probe.returncode != 0:
        print("setup: not everything imports; pass --wheels DIR (benchmarks/gpu_wheels.sh makes it)", flush=True)
        return probe.returncode
    info = json.loads(probe.stdout.split(PROBE_MARK, 1)[1])
    if args.device == "cuda" and not info["cuda"]:
        print("setup: torch sees no CUDA device", flush=True)
        return 4
    return 0


def pip_install(*argv: str, env: dict | None = None) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--disable-pip-version-check", *argv]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=REPO)


def install_wheels(wheels: Path, site: Path) -> None:
    # torchattacks 3.5.1 ships a stale top-level robustbench/ (.ci/setup): robustbench goes in last.
    every = sorted(wheels.glob("*.whl"))
    robustbench = [w for w in every if w.name.startswith("robustbench-")]
    pip_install("--target", str(site), *[str(w) for w in every if w not in robustbench])
    if robustbench:
        pip_install("--target", str(site), "--upgrade", *map(str, robustbench))


def install_this_package(site: Path, env: dict) -> None:
    """For its entry points (the torchvision, torchattacks and timm plugins); the carried setuptools
    on PYTHONPATH builds it, whatever the machine's is."""
    pip_install("--no-build-isolation", "--target", str(site), "--upgrade", str(REPO), env=env)


# --- the table --------------------------------------------------------------------------------------

def describe(name: str, figures: dict) -> tuple[str, str]:
    """(ours, DC's reference) for one step, in words."""
    ref = DC_REFERENCE
    describe_step = {
        "setup": lambda f: (f"torch {f.get('torch')}, {f.get('gpu') or 'no GPU'}, Python {f.get('python')}", ""),
        "tests": lambda f: (", ".join(f"{n} {w}" for w, n in f.get("counts", {}).items())
                            + ("" if f.get("device_option") else " (on CPU: conftest has no --device)"), ""),
        "bench-distill-dc": lambda f: (per_step(f) + loss_note(f),
                                       f"{ref['matching_step_loop_s']} s/step (DC's per-class loop)"),
        "bench-distill-regularizers": lambda f: (per_step(f), ""),
        "bench-class-batching": lambda f: (batching_note(f), f"loop {ref['matching_step_loop_s']} s, vmap "
                                           f"{ref['matching_step_vmap_s']} s per matching step"),
        "gm-distill": lambda f: (f"{f.get('completed_iterations')}/{f.get('iterations')} iterations, "
                                 f"{f.get('seconds_per_iteration_median')} s/iteration (median)",
                                 f"{ref['seconds_per_iteration']} s/iteration (median)"),
        "gm-evaluate": lambda f: (accuracy_note(f), accuracy_note({**ref, "models": 3, "set_iterations":
                                                                  ref["iterations"]})),
    }[name]
    return describe_step(figures) if figures else ("", "")


def per_step(f: dict) -> str:
    return ", ".join(f"{row} {s:.3f}" for row, s in f.get("seconds_per_step", {}).items()) + " s/step"


def loss_note(f: dict) -> str:
    loss = f.get("matching_loss")
    return f"; loss DC {loss['dc_code']:.4f} vs ours {loss['ours']:.4f}" if loss else ""


def batching_note(f: dict) -> str:
    return "; ".join(f"{reg}: " + ", ".join(f"{how} {r['seconds']:.3f}" for how, r in rows.items()) + " s"
                     for reg, rows in f.get("rows", {}).items())


def accuracy_note(f: dict) -> str:
    if not f.get("clean"):
        return f"{f.get('models', 0)} models finished"
    pgd = " / ".join(f"{f['pgd20'][e][0]:.2f}" for e in EPS if e in f.get("pgd20", {}))
    where = f"{f.get('models')} models" + (f", set at {f['set_iterations']} it." if f.get("set_iterations") else "")
    partial = " (partial)" if f.get("partial") else ""
    return f"clean {f['clean'][0]:.2f} ± {f['clean'][1]:.2f}; PGD-20 2/4/8: {pgd} ({where}){partial}"


def table(steps: list[Step], outcomes: dict[str, Outcome]) -> str:
    lines = ["| step | status | s (cap) | ours | DC's code, H100 |", "|---|---|---|---|---|"]
    for step in steps:
        o = outcomes[step.name]
        ours, theirs = describe(step.name, o.figures)
        lines.append(f"| {step.name} | {o.status} | {o.seconds:.0f} ({step.cap:.0f}) | {ours} | {theirs} |")
    return "\n".join(lines)


# --- the driver -------------------------------------------------------------------------------------

def run_steps(steps: list[Step], work: Path, sizes: Sizes, report: Callable[[dict[str, Outcome]], None]) -> dict:
    env = step_environment(work, sizes)
    outcomes: dict[str, Outcome] = {s.name: Outcome() for s in steps}
    for step in steps:
        blocked = [n for n in step.needs if n in outcomes and not outcomes[n].ok]
        outcome = outcomes[step.name]
        if blocked:
            outcome.status = f"skipped: {', '.join(blocked)} not ok"
            continue
        print(f"== {step.name} (cap {step.cap:.0f} s): {' '.join(step.argv)}", flush=True)
        outcome = outcomes[step.name] = run_capped(step, work / "logs" / f"{step.name}.log", env)
        outcome.figures = step.figures(step, outcome)
        judge(step, outcome)
        print(f"   {outcome.status} in {outcome.seconds:.0f} s", flush=True)
        report(outcomes)  # after every step: a device run stopped from outside still leaves its JSON
    return outcomes


def step_environment(work: Path, sizes: Sizes) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", RDD_NO_PROGRESS="1")
    if sizes.device == "cpu":
        # On a shared 2-core machine torch's two spinning threads made a width-8 iteration take
        # 0.6 to 17 s instead of 0.3 s; tiny sizes gain nothing from a second thread.
        env.setdefault("OMP_NUM_THREADS", "1")
    # This tree first, so that every step runs its code (the copy installed into WORK/site is there
    # for its entry points and for rdd_integrations); then what the setup step installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(work / "site"), env.get("PYTHONPATH")]))
    return env


def collect(work: Path, out: Path, steps: list[Step]) -> None:
    """Logs, the set with its checkpoint, and the evaluation's results.json into OUT (7 files)."""
    with open(out / "gpu_check.log", "w") as log:
        for step in steps:
            path = work / "logs" / f"{step.name}.log"
            if path.exists():
                log.write(f"===== {step.name}\n{path.read_text(errors='replace')}\n")
    kept = out / "gm-run"
    for src in ["gm-run/config.toml", "gm-run/meta.json", "gm-run/images.safetensors",
                "gm-run/checkpoint.safetensors", "gm-evaluation/results.json"]:
        if (work / src).exists():
            kept.mkdir(exist_ok=True)
            name = "evaluation-results.json" if src.startswith("gm-evaluation") else Path(src).name
            shutil.copy2(work / src, kept / name)


def forget_earlier_runs(work: Path, out: Path) -> None:
    """A reused --work or --out must not lend an earlier run's set or results to this one."""
    for stale in (work / "gm-run", work / ".gm-run.rdd-new", work / "gm-evaluation", work / "logs", out / "gm-run"):
        shutil.rmtree(stale, ignore_errors=True)


def document(args, sizes: Sizes, steps: list[Step], outcomes: dict[str, Outcome], started: float) -> dict:
    return {
        "mode": "rehearse" if args.rehearse else "gpu",
        "device": sizes.device,
        "python": platform.python_version(),
        "seconds": round(time.monotonic() - started, 1),
        "caps_total_s": sum(s.cap for s in steps),
        "reference": DC_REFERENCE,
        "steps": [{"name": s.name, "command": s.argv, "cap_s": s.cap, "status": outcomes[s.name].status,
                   "ok": outcomes[s.name].ok, "rc": outcomes[s.name].rc, "seconds": outcomes[s.name].seconds,
                   "figures": outcomes[s.name].figures, "tail": outcomes[s.name].tail} for s in steps],
        "table": table(steps, outcomes),
        "ok": all(outcomes[s.name].ok for s in steps),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", metavar="DIR", help="gpu_check.json, gpu_check.log and gm-run/ go here")
    ap.add_argument("--rehearse", action="store_true", help="every step on CPU at tiny sizes (under 3 minutes)")
    ap.add_argument("--wheels", metavar="DIR", help="wheels to install offline first (benchmarks/gpu_wheels.sh)")
    ap.add_argument("--data-root", metavar="DIR", help="Fashion-MNIST's IDX files (plain or Debian layout)")
    ap.add_argument("--dc-repo", metavar="DIR", help="a clone of VICO-UoE/DatasetCondensation")
    ap.add_argument("--work", metavar="DIR", help="sets, evaluations, logs and installed wheels "
                                                  "(default: a new folder under the system's temp)")
    ap.add_argument("--steps", metavar="A,B", help="only these steps (default: all)")
    ap.add_argument("--setup-step", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # the setup step's
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.setup_step:
        return setup_step(args)
    if not args.out:
        raise SystemExit("gpu_check: --out DIR is required")
    started = time.monotonic()
    sizes = REHEARSAL_SIZES if args.rehearse else GPU_SIZES
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="rdd-gpu-check-"))
    forget_earlier_runs(work, out)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    steps = plan(args, sizes, work.resolve())
    if args.steps:
        chosen = args.steps.split(",")
        unknown = sorted(set(chosen) - {s.name for s in steps})
        if unknown:
            raise SystemExit(f"--steps: unknown {', '.join(unknown)}; steps are {', '.join(s.name for s in steps)}")
        steps = [s for s in steps if s.name in chosen]

    def report(outcomes: dict[str, Outcome]) -> None:
        doc = document(args, sizes, steps, outcomes, started)
        (out / "gpu_check.json").write_text(json.dumps(doc, indent=2) + "\n")

    outcomes = run_steps(steps, work, sizes, report)
    report(outcomes)
    collect(work, out, steps)
    doc = document(args, sizes, steps, outcomes, started)
    print(f"\n{doc['table']}\n\n{'all steps ok' if doc['ok'] else 'NOT all steps ok'} in {doc['seconds']:.0f} s "
          f"(caps add up to {doc['caps_total_s']:.0f} s); {out / 'gpu_check.json'}; work in {work}")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
