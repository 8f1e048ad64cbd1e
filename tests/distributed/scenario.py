"""Commands run under ``torchrun`` by tests/test_distributed.py: every output goes to OUT, which
the test compares between 1 and 2 ranks.

    torchrun --standalone --nproc_per_node=N tests/distributed/scenario.py OUT MODE

MODE ``runs``: distil with gm+curvature, dsa, dm, sre2l+curvature, random and herding; evaluate and
benchmark the gm set; and a gm run stopped after 2 of 3 iterations (its checkpoint is resumed on 1
rank by the test). With 2 ranks also ``by-rank``: a gm run whose draws are seeded by rank, the
negative control the equality test must catch.
MODE ``die``: the gm run of ``runs``, with rank 1 killed (SIGKILL) after its second iteration the
first time; ``torchrun --max-restarts=1`` starts both ranks again and the run continues.
MODE ``fail``: rank 1 cannot load its data; both ranks must stop with that one error.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from conftest import tiny_config  # noqa: E402

from rdd_plugins import cli, config as config_io  # noqa: E402
from rdd_plugins.distributed.world import current_world, finish_process, restart_count, start_world  # noqa: E402
from rdd_plugins.errors import RddError  # noqa: E402

BN = {"name": "convnet", "params": {"width": 8, "depth": 2, "norm": "batch"}}
DISTILL = {
    "gm": {"distiller": "gm", "regularizer": "curvature", "regularizer_params": {"h": 0.5, "lam": 1.0}},
    "dsa": {"distiller": "dsa", "regularizer": "none"},
    "dm": {"distiller": "dm", "regularizer": "none", "params": {"batch_real": 8}},
    "sre2l": {"distiller": "sre2l", "regularizer": "curvature", "regularizer_params": {"h": 0.5, "lam": 1.0},
              "iterations": 4, "params": {"teacher_epochs": 1, "batch_size": 32, "recover_batch": 3,
                                          "relabel_crops": 3}},
    "random": {"distiller": "random", "regularizer": "none", "params": {}},
    "herding": {"distiller": "herding", "regularizer": "none", "params": {}},
}


def config(name: str) -> dict:
    cfg = tiny_config(**DISTILL[name])
    cfg["device"] = "cpu"
    cfg["data"]["params"]["num_classes"] = 5  # uneven blocks on 2 ranks: classes 0-2 and 3-4
    cfg["distill"]["checkpoint_every"] = 1
    if name == "sre2l":
        cfg["backbone"] = BN
    cfg["evaluate"].update({"n_test": 40, "eval_batch_size": 8, "attack": "fgsm,pgd", "epochs": 10,
                            "attack_params": {"pgd": {"steps": 3}}})
    return cfg


def rdd(*argv: str) -> None:
    code = cli.main([*argv, "--no-progress"] if argv[0] != "compare" else list(argv))
    if code != 0:
        raise SystemExit(f"rdd {' '.join(argv)} exited {code}")


def write_config(out: Path, name: str) -> Path:
    path = out / f"{name}.toml"
    if current_world().is_main:
        path.write_text(config_io.to_toml(config(name)))
    torch.distributed.barrier() if current_world().distributed else None
    return path


def runs(out: Path) -> None:
    for name in DISTILL:
        rdd("distill", "--config", str(write_config(out, name)), "--out", str(out / name))
    rdd("evaluate", str(out / "gm"), "--out", str(out / "gm-evaluation"))
    rdd("benchmark", str(out / "gm"), "--n-examples", "12", "--batch-size", "4", "--out", str(out / "gm-benchmark"))
    rdd("distill", "--config", str(write_config(out, "gm")), "--iterations", "2", "--out", str(out / "gm-partial"))
    if current_world().distributed:
        by_rank(out)


def by_rank(out: Path) -> None:
    """The negative control: draws keyed by rank as well as by work. With RDD_CHECK_REPLICAS the run
    must stop at the first inner loop (recorded in by-rank.json); without, it ends with another set."""
    from rdd_plugins import randomness

    keyed = randomness.work_seed
    randomness.work_seed = lambda seed, *key: keyed(seed, *key, "rank", current_world().rank)
    cfg = str(write_config(out, "gm"))
    try:
        try:
            rdd("distill", "--config", cfg, "--out", str(out / "gm-by-rank-checked"))
            caught = False
        except SystemExit:
            caught = True
        os.environ["RDD_CHECK_REPLICAS"] = "0"
        rdd("distill", "--config", cfg, "--out", str(out / "gm-by-rank"))
    finally:
        randomness.work_seed = keyed
    if current_world().is_main:
        (out / "by-rank.json").write_text(json.dumps({"replica_check_stopped_it": caught}))


def die(out: Path) -> None:
    from rdd_plugins.builtin.distillers.gm import GradientMatching

    step = GradientMatching.step

    def step_or_die(self, state, context):
        if context.iteration == 2 and context.world.rank == 1 and restart_count() == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self, state, context)

    GradientMatching.step = step_or_die
    rdd("distill", "--config", str(write_config(out, "gm")), "--out", str(out / "gm"))
    if current_world().is_main:
        (out / "restarts.json").write_text(json.dumps({"restart_count": restart_count()}))


def fail(out: Path) -> None:
    """Rank 1 alone cannot read its data: every rank must stop, rank 0 saying why, once."""
    from rdd_plugins.distillation import loop

    load = loop.load_split

    def load_or_fail(registry, cfg, split):
        if current_world().rank == 1:
            raise RddError("the disk of rank 1 is unreadable")
        return load(registry, cfg, split)

    loop.load_split = load_or_fail
    code = cli.main(["distill", "--config", str(write_config(out, "gm")), "--out", str(out / "gm"), "--no-progress"])
    (out / f"exit-{current_world().rank}.json").write_text(json.dumps({"code": code}))


if __name__ == "__main__":
    torch.set_num_threads(1)  # the same arithmetic in every process, whatever the number of ranks
    target, mode = Path(sys.argv[1]), sys.argv[2]
    start_world()
    code = 0
    try:
        {"runs": runs, "die": die, "fail": fail}[mode](target)
    except BaseException:  # noqa: BLE001 - said below, and the exit code says it to the test
        traceback.print_exc()
        code = 1
    # Leaves the group and skips the teardown Gloo's threads can abort (as it did twice on CI after
    # this scenario had written everything), as the rdd command does.
    finish_process(code)
