"""Several processes give the numbers one process gives (issue 15).

The end-to-end tests start ``torchrun`` with 1 and 2 gloo ranks on loopback and compare every output
bitwise (timings aside): tests/distributed/scenario.py says what runs. The unit tests check the
ownership and keying rules the equality rests on, without processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rdd_plugins.distributed.work import block_of, dealt_to, fail_together, merge_disjoint
from rdd_plugins.distributed.world import World
from rdd_plugins.errors import RddError
from rdd_plugins.evaluation.metrics import without_timings
from rdd_plugins.randomness import work_generator, work_seed

SCENARIO = Path(__file__).parent / "distributed" / "scenario.py"
SETS = ("gm", "dsa", "dm", "sre2l", "random", "herding")


# -- ownership and keys ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [1, 2, 3, 7])
@pytest.mark.parametrize("items", [0, 1, 5, 10])
def test_blocks_and_deals_cover_every_item_once(items, size):
    for split in (block_of, dealt_to):
        owned = [list(split(items, World(rank, size))) for rank in range(size)]
        assert sorted(i for part in owned for i in part) == list(range(items)), split.__name__
    blocks = [len(block_of(items, World(rank, size))) for rank in range(size)]
    assert max(blocks) - min(blocks) <= 1 and blocks == sorted(blocks, reverse=True)


def test_work_keys_give_their_own_streams_and_never_depend_on_the_process():
    assert work_seed(0, "real", 3, 1, 2) == work_seed(0, "real", 3, 1, 2)
    seeds = {work_seed(s, "real", it, c) for s in range(2) for it in range(20) for c in range(10)}
    assert len(seeds) == 400 and all(0 <= s < 2**63 for s in seeds)
    a = torch.randperm(50, generator=work_generator(0, "real", 1, 2))
    b = torch.randperm(50, generator=work_generator(0, "real", 1, 2))
    c = torch.randperm(50, generator=work_generator(0, "real", 1, 3))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_one_process_merges_nothing_and_fails_alone():
    t = torch.arange(4.0)
    assert merge_disjoint(t, World()) is t and torch.equal(t, torch.arange(4.0))
    with pytest.raises(RddError, match="bad"):
        with fail_together(World()):
            raise RddError("bad")


# -- 1 rank vs 2 ranks, end to end ------------------------------------------------------------------

def torchrun(nproc: int, out: Path, mode: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "RDD_NO_PROGRESS": "1",
           "RDD_CHECK_REPLICAS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--rdzv-endpoint=127.0.0.1:0", *extra, str(SCENARIO), str(out), mode]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The scenario's outputs on 1 and on 2 ranks."""
    one, two = tmp_path_factory.mktemp("one-rank"), tmp_path_factory.mktemp("two-ranks")
    torchrun(1, one, "runs")
    torchrun(2, two, "runs")
    return one, two


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "images.safetensors"))


def history(folder: Path) -> list:
    return without_timings(json.loads((folder / "history.json").read_text())["history"])


def assert_same_set(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), f"{a.name}: {key} differs"
    assert history(a) == history(b)


@pytest.mark.parametrize("name", SETS)
def test_two_ranks_distil_the_set_one_rank_distils(runs, name):
    one, two = runs
    assert_same_set(one / name, two / name)


def test_two_ranks_evaluate_and_benchmark_as_one_does(runs):
    one, two = runs
    rows = [without_timings(json.loads((r / "gm-evaluation" / "results.json").read_text())["results"])
            for r in runs]
    assert rows[0] == rows[1]
    bench = [without_timings(json.loads((r / "gm-benchmark" / "benchmark.json").read_text())["result"])
             for r in runs]
    for b in bench:
        b.pop("model_info_path")
    assert bench[0] == bench[1]


def test_the_equality_test_and_the_replica_check_catch_draws_seeded_by_rank(runs):
    one, two = runs
    assert not torch.equal(tensors(one / "gm")["images"], tensors(two / "gm-by-rank")["images"])
    assert json.loads((two / "by-rank.json").read_text()) == {"replica_check_stopped_it": True}


def test_a_checkpoint_of_two_ranks_resumes_on_one(runs, tmp_path):
    one, two = runs
    partial = tmp_path / "partial"
    shutil.copytree(two / "gm-partial", partial)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RDD_NO_PROGRESS": "1"}
    subprocess.run([sys.executable, "-m", "rdd_plugins.cli", "distill", "--resume", str(partial),
                    "--iterations", "3"], env=env, check=True, capture_output=True, timeout=300)
    assert_same_set(one / "gm", partial)


def test_a_failure_on_one_rank_stops_every_rank_with_its_one_line_error(tmp_path):
    done = torchrun(2, tmp_path, "fail")
    codes = [json.loads((tmp_path / f"exit-{rank}.json").read_text())["code"] for rank in (0, 1)]
    assert codes == [2, 2]
    said = [line for line in done.stderr.splitlines() if line.startswith("rdd")]
    assert said == ["rdd: error: rank 1 failed: the disk of rank 1 is unreadable"]
    assert not (tmp_path / "gm").exists()  # nothing written


def test_a_rank_killed_mid_run_is_restarted_and_ends_with_the_uninterrupted_set(runs, tmp_path):
    one, _ = runs
    torchrun(2, tmp_path, "die", "--max-restarts=1")
    assert json.loads((tmp_path / "restarts.json").read_text()) == {"restart_count": 1}
    assert_same_set(one / "gm", tmp_path / "gm")


def test_study_under_torchrun_deals_the_shards_jobs_across_ranks(monkeypatch, capsys):
    """Rank r of W in shard I/N runs shard I + N*r of N*W: the ranks of a shard take its jobs once."""
    from rdd_plugins import api, cli
    from rdd_plugins.studies.jobs import shard_jobs

    taken = {}

    def fake_study(source, *, out, shard, progress):
        taken[rank] = (shard, progress)
        return {"done": {"distilled": 4}, "shard": list(shard), "shard_jobs": 4, "jobs": 23, "study": "s", "out": "o"}

    monkeypatch.setattr(api, "study", fake_study)
    jobs = list(range(23))
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        assert cli.main(["study", "x.toml", "--shard", "1/2"]) == 0
        # rank 0 speaks for the launch: the shard as given and its own part, not its shard of the launch
        printed = capsys.readouterr().out
        assert ("study s (process 0 of 3, shard 1/2: 4 of 23 jobs): distilled 4" in printed) == (rank == 0)
    dealt = [shard_jobs(jobs, *taken[rank][0]) for rank in range(3)]
    assert sorted(j for part in dealt for j in part) == shard_jobs(jobs, 1, 2)
    assert [taken[rank][1] for rank in range(3)] == [True, False, False]  # bars on rank 0 only


_FINISH = """
import atexit, datetime, sys, tempfile, threading, time
from pathlib import Path
import torch.distributed as dist
from rdd_plugins import cli
from rdd_plugins.distributed.world import finish_process, stop_world

out, mode = Path(sys.argv[1]), sys.argv[2]
class Teardown:  # its __del__ runs only when the interpreter finalizes __main__
    def __del__(self):
        (out / "teardown").write_text("ran")
keep = Teardown()
left = tempfile.TemporaryDirectory(dir=out)  # never cleaned up here: its finalizer runs at exit
atexit.register(lambda: (out / "atexit").write_text(str(dist.is_initialized())))
threading.Thread(target=lambda: (time.sleep(0.5), (out / "thread").write_text("done"))).start()
if mode != "none":
    dist.init_process_group("gloo", init_method=f"file://{out}/rdv", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    dist.all_reduce(__import__("torch").ones(2))
if mode == "left":  # as rdd's main does before it returns
    stop_world()
print("written", end="")  # no newline: stays in the buffer unless flushed
if mode == "console":  # the rdd command, its main ending in a plugin's SystemExit
    cli.main = lambda: sys.exit("a plugin gave up")
    cli.console()
finish_process(3)
"""


@pytest.mark.parametrize("mode", ["group", "left", "console", "none"])
def test_finishing_a_process_does_what_exit_does_and_skips_teardown_only_after_a_group(tmp_path, mode):
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _FINISH, str(tmp_path), mode], env=env, capture_output=True,
                          text=True, timeout=120)
    # sys.exit's reading of the status: a message is printed and means 1
    assert (done.returncode, done.stdout) == ((1, "written") if mode == "console" else (3, "written")), done.stderr
    assert ("a plugin gave up" in done.stderr) == (mode == "console")
    assert (tmp_path / "thread").read_text() == "done"  # non-daemon threads were waited for
    assert (tmp_path / "atexit").read_text() == "False"  # the group was left before the handlers ran
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # the temporary folder's finalizer ran
    # After a group, left or not, the interpreter's teardown (where Gloo's threads can abort) is
    # skipped; without one the process exits the ordinary way.
    assert (tmp_path / "teardown").exists() == (mode == "none")


def test_the_rdd_command_is_the_console_entry():
    from rdd_plugins.config.toml_io import load_toml

    declared = load_toml(Path(__file__).parents[1] / "pyproject.toml")
    assert declared["project"]["scripts"]["rdd"] == "rdd_plugins.cli:console"
