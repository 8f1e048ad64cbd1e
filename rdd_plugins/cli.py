"""``rdd``: a thin command-line layer over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import signal
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from .errors import RddError
from .run.interrupt import Terminated, sigterm_unwinds


def _count(minimum: int):
    """An argparse type: an integer of at least ``minimum``, else a one-line error saying so."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _folder(text: str) -> str:
    """An argparse type for a folder that must exist already (a dataset root)."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder" if path.exists() else f"{text} does not exist")
    return text


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.toml", help="TOML config; flags below override it")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set distill.params.lr_img=0.05 (repeatable)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto = CUDA when present")
    p.add_argument("--seed", type=_count(0))
    p.add_argument("--data-root", metavar="DIR", type=_folder, help="where the dataset files are (must exist)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _numerics(p: argparse.ArgumentParser) -> None:
    """The runtime's switches, for the commands that set them (rdd_plugins/runtime.py)."""
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction,
                   help="deterministic algorithms (default auto: on to distil, off to evaluate)")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction,
                   help="TF32 on Ampere+ GPUs (default auto: off to distil, on to evaluate)")


def _switch(name: str, value: bool | None) -> str:
    return f"--{name}" if value else f"--no-{name}"


class _Parser(argparse.ArgumentParser):
    """Bad flags get the same one line as every other bad input (``rdd --help`` has the usage)."""

    def error(self, message: str):
        command = self.prog.removeprefix("rdd").strip()
        self.exit(2, f"rdd: error: {command + ': ' if command else ''}{message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rdd", description="Robust dataset distillation with plugins.")
    parser.add_argument("--version", action=_PrintVersions,
                        help="the package, torch and plugin distributions, with their versions")
    parser.add_argument("--strict", action="store_true",
                        help="a plugin that fails to load or register is an error (= RDD_STRICT_PLUGINS=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list registered parts and plugins")
    p.add_argument("--json", action="store_true", help="one JSON object: kind -> [{name, plugin, description}]")

    p = sub.add_parser("distill", help="distil a dataset into a few images per class")
    _common(p)
    _numerics(p)
    p.add_argument("--dataset")
    p.add_argument("--ipc", type=_count(1), help="images per class")
    p.add_argument("--distiller")
    p.add_argument("--regularizer")
    p.add_argument("--backbone")
    p.add_argument("--iterations", type=_count(1), help="with --resume: a larger budget extends the run")
    p.add_argument("--out", metavar="DIR", help="run folder for the distilled set and its checkpoints")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the set in --out (and what was derived from it) once the new run has a checkpoint")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")

    p = sub.add_parser("evaluate", help="train fresh models on a distilled set; clean and robust accuracy")
    _common(p)
    _numerics(p)
    p.add_argument("set_dir", metavar="DIR", help="a distilled-set folder")
    p.add_argument("--suite", help="attack suite: quick, standard, autoattack, dd-robustbench, or a plugin's")
    p.add_argument("--attack", help="attack name(s), comma-separated, e.g. fgsm,pgd,cw (beside --suite: run after it)")
    p.add_argument("--eps", nargs="+", metavar="EPS", help="Linf eps in pixel units, e.g. 2/255 8/255 0.1")
    p.add_argument("--eps-l2", nargs="+", metavar="EPS", help="L2 radii in pixel units, e.g. 0.5 1.0")
    cascade = p.add_mutually_exclusive_group()
    cascade.add_argument("--no-cascade", dest="cascade", action="store_const", const="off",
                         help="run every attack on all clean-correct points (per-attack tables, RR/I-RR/CREI)")
    cascade.add_argument("--cascade", dest="cascade", action="store_const", const="on",
                         help="run each attack only on the points the ones before it left (the suites' default)")
    p.add_argument("--backbones", metavar="A,B", help="evaluation backbones, e.g. convnet,timm:resnet18")
    p.add_argument("--seeds", type=_count(1), help="number of fresh models per backbone")
    p.add_argument("--epochs", type=_count(1))
    p.add_argument("--n-test", type=_count(0), help="first N test points (0 = all)")
    p.add_argument("--out", metavar="DIR", help="report folder (default DIR/evaluation)")

    p = sub.add_parser("compare", help="merge several evaluations into one table and one plot")
    p.add_argument("runs", nargs="+", metavar="RUN", help="evaluation folders or results.json files")
    p.add_argument("--out", default="runs/compare", metavar="DIR", help="report folder (default runs/compare)")
    p.add_argument("--title", default="Comparison")

    p = sub.add_parser("benchmark", help="RobustBench protocol: AutoAttack standard on a model trained on the set")
    _common(p)
    p.add_argument("set_dir", metavar="DIR", help="a distilled-set folder")
    p.add_argument("--dataset", help="must be the set's dataset (default); cifar10/cifar100 go through robustbench.benchmark")
    p.add_argument("--threat-model", default="Linf", choices=["Linf", "L2"])
    p.add_argument("--eps", help="default: the leaderboard's (Linf 8/255, L2 0.5)")
    p.add_argument("--n-examples", type=_count(1), default=10000, help="first N test points in order (RobustBench: 10000)")
    p.add_argument("--backbone", help="the model to train on the set (default: the set's backbone)")
    p.add_argument("--batch-size", type=_count(1), default=500)
    p.add_argument("--name", help="model name in the ModelInfo JSON (default: from the set)")
    p.add_argument("--out", metavar="DIR", help="output folder (default DIR/benchmark)")

    p = sub.add_parser("import", help="turn a set another tool distilled (DC, MTT, SRe2L, folders, tensors) "
                                      "into a set folder")
    p.add_argument("src", metavar="SRC", help="the tool's file or folder")
    p.add_argument("--format", required=True, help="set format: dc, mtt, sre2l, folder, tensors, or a plugin's")
    p.add_argument("--dataset", required=True, help="the registered dataset the set was distilled from")
    p.add_argument("--out", required=True, metavar="DIR", help="set folder to write")
    p.add_argument("--index", type=_count(0), help="dc: which experiment of the results file (default 0)")
    p.add_argument("--normalized", action="store_true",
                   help="tensors: the images are normalized with the dataset's mean/std")
    p.add_argument("--clip", action="store_true",
                   help="clip the images to [0, 1] (default: kept as the tool made them)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a format option, e.g. --set zca=true, or a dataset parameter, "
                        "e.g. --set data.params.num_classes=3 (repeatable)")
    p.add_argument("--data-root", metavar="DIR", type=_folder, help="where the dataset files are (must exist)")
    p.add_argument("--overwrite", action="store_true", help="replace the set in --out (and what was derived from it)")

    p = sub.add_parser("quickstart",
                       help="random, gm, gm+curvature, sre2l, sre2l+curvature on Fashion-MNIST, CPU-sized")
    _common(p)
    _numerics(p)
    p.add_argument("--out", default="runs/quickstart", metavar="DIR")

    p = sub.add_parser("study", help="a grid of distill -> evaluate jobs from a study TOML, with a leaderboard")
    p.add_argument("study_file", metavar="STUDY.toml", help="[base] run config and [grid] (docs/study.md)")
    p.add_argument("--out", metavar="DIR", help="study folder (default runs/STEM); a rerun continues there")
    p.add_argument("--shard", default="0/1", metavar="I/N",
                   help="run every N-th job from the I-th (0-based), e.g. $SLURM_ARRAY_TASK_ID/8")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--status", action="store_true",
                      help="say what each job still needs (finished, evaluate, resume, distil, results-only); "
                           "run and write nothing")
    only.add_argument("--leaderboard", action="store_true",
                      help="rewrite the leaderboard from the finished jobs in --out (an export's JSONs too); "
                           "run no job")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    for sub_parser in sub.choices.values():
        # eps values such as -1/255 are values (rejected by parse_eps with the reason), not options
        sub_parser._negative_number_matcher = re.compile(r"^-[0-9.]+(/[0-9.]+)?$")
    return parser


class _PrintVersions(argparse.Action):
    """``rdd --version``: the package, the libraries its numbers depend on, and plugin distributions."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__
        from .plugins import plugin_info
        from .versions import package_versions

        lines = [f"rdd-plugins {__version__}"]
        lines += [f"  {name} {version}" for name, version in package_versions().items() if name != "rdd-plugins"]
        plugins = sorted({(p["distribution"], p["version"]) for p in plugin_info()
                          if p["distribution"] not in ("rdd-plugins", "?")})
        lines += [f"  plugin {dist} {version}" for dist, version in plugins]
        print("\n".join(lines))
        parser.exit()


def _overrides(args: argparse.Namespace, mapping: dict[str, str]) -> dict:
    from .config import override_pairs

    over = override_pairs(args.sets)
    common = {"device": "device", "seed": "seed", "data_root": "data.root", "deterministic": "deterministic",
              "tf32": "tf32"}
    for attr, dotted in {**mapping, **common}.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        node = over
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return over


def cmd_plugins(args) -> int:
    from .plugins import get_registry, plugin_failures, plugin_info

    registry = get_registry()
    failures = [f.__dict__ for f in plugin_failures()]
    if args.json:
        print(json.dumps({**registry.as_dict(), "plugins": plugin_info(), "failed_plugins": failures}, indent=2))
        return 0
    for kind, entries in registry.as_dict().items():
        print(f"{kind}:")
        for e in entries:
            won = f", overrides {e['overrides']}" if e.get("overrides") else ""
            print(f"  {e['name']:<16} [{e['plugin']}{won}] {e['description']}")
    for f in failures:
        print(f"failed plugin {f['name']} ({f['distribution']}): {f['error']}")
    return 0


def cmd_distill(args) -> int:
    from .api import distill

    over = _overrides(args, {"dataset": "data.dataset", "ipc": "distill.ipc", "distiller": "distill.distiller",
                             "regularizer": "distill.regularizer", "backbone": "backbone.name",
                             "iterations": "distill.iterations"})
    if args.resume:
        if args.out and Path(args.out) != Path(args.resume):
            raise RddError("--resume DIR writes into DIR; drop --out")
        typed = [flag for flag, given in (("--config", args.config), ("--set", args.sets),
                                          ("--dataset", args.dataset), ("--ipc", args.ipc),
                                          ("--distiller", args.distiller), ("--regularizer", args.regularizer),
                                          ("--backbone", args.backbone), ("--seed", args.seed),
                                          ("--data-root", args.data_root), ("--overwrite", args.overwrite)) if given]
        # the run's numerics are part of how it continues exactly (a false switch is given too)
        typed += [_switch(name, value) for name, value in (("deterministic", args.deterministic),
                                                            ("tf32", args.tf32)) if value is not None]
        if typed:
            raise RddError(f"--resume continues the run as {Path(args.resume) / 'config.toml'} says; "
                           f"drop {', '.join(typed)} (only --device, and --iterations to extend it, may change)")
        out = args.resume
    elif not args.out:
        raise RddError("distill needs --out DIR (or --resume DIR)")
    else:
        out = args.out
    try:
        result = distill(None if args.resume else args.config, out=out, progress=not args.no_progress,
                         overrides=over, resume=bool(args.resume), overwrite=args.overwrite)
    except KeyboardInterrupt:
        from .distributed.world import current_world

        if current_world().is_main:
            _say_how_to_resume(Path(out))
        raise
    print(f"distilled {result.images.shape[0]} images -> {out}")
    return 0


def _say_how_to_resume(out: Path) -> None:
    from .checkpoint import CHECKPOINT_FILE
    from .run.parts import unfinished

    try:
        note = unfinished(json.loads((out / "meta.json").read_text()))
    except (OSError, ValueError):
        note = ""
    if note and (out / CHECKPOINT_FILE).is_file():
        print(f"rdd: {note}; the set so far and a checkpoint are in {out}; continue with "
              f"`rdd distill --resume {out}`", file=sys.stderr)


def _print_rows(results: list[dict]) -> None:
    for r in results:
        s = r["summary"]
        worst = ", ".join(f"{t} {e}: {v['mean']:.2f}±{v['std']:.2f}" for t, per in s["worst"].items()
                          for e, v in per.items())
        print(f"{r['label']} [{r['backbone']}] clean {s['clean']['mean']:.2f}±{s['clean']['std']:.2f}; "
              f"worst case {worst}")


def cmd_evaluate(args) -> int:
    from .api import evaluate

    over = _overrides(args, {"suite": "evaluate.suite", "attack": "evaluate.attack", "eps": "evaluate.eps",
                             "eps_l2": "evaluate.eps_l2", "backbones": "evaluate.backbone",
                             "seeds": "evaluate.seeds", "epochs": "evaluate.epochs", "n_test": "evaluate.n_test",
                             "cascade": "evaluate.cascade"})
    out = args.out or str(Path(args.set_dir) / "evaluation")
    results = evaluate(args.set_dir, args.config, out=out, progress=not args.no_progress, overrides=over)
    _print_rows(results)
    print(f"report: {Path(out) / 'report.md'}")
    return 0


def cmd_compare(args) -> int:
    from .api import compare

    rows = compare(args.runs, out=args.out, title=args.title)
    _print_rows(rows)
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_benchmark(args) -> int:
    from .api import benchmark

    over = _overrides(args, {"backbone": "evaluate.backbone"})
    out = args.out or str(Path(args.set_dir) / "benchmark")
    result = benchmark(args.set_dir, args.config, out=out, dataset=args.dataset, threat_model=args.threat_model,
                       eps=args.eps, n_examples=args.n_examples, batch_size=args.batch_size, name=args.name,
                       progress=not args.no_progress, overrides=over)
    print(f"{result['dataset']} {result['threat_model']} eps={result['eps_text']}: clean "
          f"{100 * result['clean_acc']:.2f}%, AutoAttack {100 * result['autoattack_acc']:.2f}% "
          f"on {result['n_examples']} points")
    print(f"results: {Path(out) / 'benchmark.json'}; model info: {result['model_info_path']}")
    return 0


def cmd_import(args) -> int:
    from .api import import_set
    from .config import override_pairs

    options = _plain(override_pairs(args.sets))
    data = options.pop("data", {})
    if not isinstance(data, dict) or set(data) - {"params"}:
        raise RddError("the one data setting of rdd import is --set data.params.KEY=VALUE (the dataset's "
                       "parameters); --dataset names it and --data-root gives its root")
    flagged = sorted(set(options) & {"format", "dataset", "out", "dataset_params", "data_root", "clip", "overwrite"})
    if flagged:
        flag = {"dataset_params": "--set data.params.KEY=VALUE"}.get(flagged[0], f"--{flagged[0].replace('_', '-')}")
        raise RddError(f"--set {flagged[0]}=... is not a format option; use {flag}")
    if args.index is not None:
        options["index"] = args.index
    if args.normalized:
        options["normalized"] = True
    result = import_set(args.src, format=args.format, dataset=args.dataset, out=args.out,
                        dataset_params=data.get("params"),
                        data_root=args.data_root, clip=args.clip, overwrite=args.overwrite, **options)
    imported = result.meta["imported"]
    low, high = imported["pixel_range"]
    per_class = f", ipc {result.meta['ipc']}" if "ipc" in result.meta else ""
    kept = "clipped to [0, 1]" if imported["clipped"] else "kept as is"
    print(f"imported {result.images.shape[0]} images ({args.format}, {args.dataset}{per_class}; pixel range "
          f"[{low:.3g}, {high:.3g}], {kept}) -> {args.out}")
    return 0


def _plain(table):
    """--set's nested tables as plain dicts (options reach plugins, which may check ``type(x) is dict``)."""
    return {k: _plain(v) for k, v in table.items()} if isinstance(table, dict) else table


def cmd_quickstart(args) -> int:
    from .config import load_toml, merge, resolve
    from .quickstart import run_quickstart

    over = _overrides(args, {})
    if args.config:  # a TOML file applies to every method, like --set
        over = merge(load_toml(args.config), over)
    resolve(base=over)  # fail fast on a bad key before minutes of work
    summary = run_quickstart(args.out, over, progress=not args.no_progress)
    _print_rows(summary["results"])
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_study(args) -> int:
    from .api import study
    from .distributed.world import launched_size
    from .studies.jobs import parse_shard

    index, count = parse_shard(args.shard)
    if args.status:
        return _print_study_status(args, (index, count))
    if args.leaderboard:
        from .api import study_leaderboard
        from .studies.runner import default_out

        board = study_leaderboard(args.study_file, out=args.out)
        out = Path(args.out) if args.out else default_out(args.study_file)
        print(f"study {board['study']}: {board['jobs']['finished']} of {board['jobs']['total']} jobs finished")
        print(f"leaderboard: {out / 'leaderboard.md'}")
        return 0
    # Under torchrun the jobs of this shard are dealt across the ranks, each job run whole by one
    # rank (jobs are independent: no process group is needed, and none is joined).
    rank, ranks = int(os.environ.get("RANK", "0")), launched_size()
    if ranks > 1:
        import torch

        if torch.cuda.is_available():  # "cuda" is this process's own GPU, as in the other commands
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    summary = study(args.study_file, out=args.out, shard=(index + count * rank, count * ranks),
                    progress=not args.no_progress and rank == 0)
    done = ", ".join(f"{how} {n}" for how, n in summary["done"].items()) or "no job in this shard"
    if ranks > 1:  # the launch's shard as given, and this process's part of it
        given = f", shard {index}/{count}" if count > 1 else ""
        shard = f" (process {rank} of {ranks}{given}: {summary['shard_jobs']} of {summary['jobs']} jobs)"
    else:
        shard = f" (shard {index}/{count}: {summary['shard_jobs']} of {summary['jobs']} jobs)" if count > 1 else ""
    print(f"study {summary['study']}{shard}: {done}")
    print(f"leaderboard: {Path(summary['out']) / 'leaderboard.md'}")
    return 0


def _print_study_status(args, shard: tuple[int, int]) -> int:
    from .api import study_status

    status = study_status(args.study_file, out=args.out, shard=shard)
    for row in status["rows"]:
        detail = ""
        if row["state"] == "evaluate":
            detail = f" ({row['missing']} of {row['of']} evaluations missing)"
        elif row["state"] == "resume":
            detail = f" (checkpoint at {row['iteration']} of {row['iterations']} iterations)"
        print(f"{row['state']:>9}  {row['job']}{detail}")
    counts = ", ".join(f"{n} {state}" for state, n in status["counts"].items()) or "no job in this shard"
    index, count = status["shard"]
    shard_text = f" shard {index}/{count}:" if count > 1 else ""
    print(f"study {status['study']} in {status['out']}:{shard_text} {counts} (of {status['shard_jobs']} jobs)")
    bare = status["counts"].get("results-only", 0)
    if bare:
        print(f"{bare} job{'s hold' if bare > 1 else ' holds'} results without a set (an export?): a run into "
              "this folder stops before any work; --leaderboard rewrites the leaderboard from them")
    unfinished = len(status["rows"]) - status["counts"].get("finished", 0) - bare
    unpriced = status["left"]["unpriced"]
    pace = "at the pace of the finished jobs of the same method and IPC"
    if unpriced < unfinished:
        print(f"about {_duration(status['left']['seconds'])} left {pace}"
              + (f", and {unpriced} jobs with no such job to go by" if unpriced else ""))
    elif unpriced:
        print(f"no time estimate: no unfinished job ({unpriced}) has a finished job of the same method and IPC to go by")
    return 0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


COMMANDS = {"plugins": cmd_plugins, "distill": cmd_distill, "evaluate": cmd_evaluate, "compare": cmd_compare,
            "benchmark": cmd_benchmark, "import": cmd_import, "quickstart": cmd_quickstart, "study": cmd_study}


# Commands that run their work on torchrun's ranks when launched by it (docs/distributed.md).
DISTRIBUTED_COMMANDS = ("distill", "evaluate", "benchmark", "quickstart")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.strict:
        os.environ["RDD_STRICT_PLUGINS"] = "1"
    from .distributed.world import World, current_world, launched_size, start_world, stop_world

    world = current_world()
    joined = False  # whether this call joined the ranks' group, and so leaves it
    try:
        if args.command in DISTRIBUTED_COMMANDS and launched_size() > 1:
            joined = not world.distributed
            world = start_world()
        elif launched_size() > 1:
            world = World(int(os.environ.get("RANK", "0")), launched_size())  # to speak once, as rank 0
            if args.command != "study":
                raise RddError(f"rdd {args.command} runs in one process; launch it without torchrun")
        with contextlib.ExitStack() as quiet:
            quiet.enter_context(sigterm_unwinds())
            if not world.is_main:  # rank 0 speaks for all: its summary lines are every rank's
                quiet.enter_context(contextlib.redirect_stdout(quiet.enter_context(open(os.devnull, "w"))))
            return COMMANDS[args.command](args)
    except RddError as exc:
        _say(world, exc, f"rdd: error: {exc}")
        return 2
    except Terminated:
        _say(world, None, "rdd: terminated; finished parts were kept")
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        _say(world, None, "rdd: interrupted; finished parts were kept")
        return 130
    except Exception as exc:  # e.g. a plugin rejecting a parameter value: still one line
        if isinstance(exc, BrokenPipeError) and _stdout_reader_gone():
            # `rdd plugins | head -1`: end quietly, as a tool killed by SIGPIPE does, with stdout on
            # /dev/null so the interpreter's last flush does not raise again. Another pipe breaking
            # (a worker's) is an error like any other.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 128 + signal.SIGPIPE
        if os.environ.get("RDD_DEBUG"):
            raise
        text = " ".join(str(exc).split())
        _say(world, exc, f"rdd: error: {type(exc).__name__}: {text} (RDD_DEBUG=1 shows the traceback)")
        return 1
    finally:
        if joined:
            stop_world()


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose read end has closed (poll reports an error on its write end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no real file behind stdout, or no poll (Windows)
        return False


def _say(world, exc: BaseException | None, line: str) -> None:
    """One line on stderr. On several ranks rank 0 says it; another rank only for an error that rank 0
    has not been told of (one that struck it alone, mid-run), and then names itself."""
    if world.is_main:
        print(line, file=sys.stderr)
    elif exc is not None and not getattr(exc, "shared_with_rank_0", False):
        print(line.replace("rdd: ", f"rdd (rank {world.rank}/{world.size}): ", 1), file=sys.stderr)


def console() -> NoReturn:
    """The ``rdd`` command: :func:`main`, then leave the process as
    :func:`~rdd_plugins.distributed.world.finish_process` does (past Gloo's teardown when a group ran),
    whichever way main ended (``RDD_DEBUG=1`` lets an error out; a plugin may raise SystemExit)."""
    from .distributed.world import finish_process

    try:
        code = main()
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:  # one landing outside main's own handling, e.g. while leaving the group
        code = 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 - as the interpreter reports an uncaught error, then exit 1
        traceback.print_exc()
        code = 1
    finish_process(code)


if __name__ == "__main__":
    console()
