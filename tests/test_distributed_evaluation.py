"""Evaluation and benchmark on several ranks give the numbers of one process (issue 15).

Most tests play one rank of a 2- or 3-rank world in this process: the collectives are replaced by
what that rank would see if the others contributed nothing (a merge returns the rank's own part), so
each rank's share can be compared with the single-process result entry by entry. One test starts
two real gloo ranks and runs ``rdd evaluate``'s and ``rdd benchmark``'s code end to end.
"""

import datetime
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import rdd_plugins
from rdd_plugins.distributed import work
from rdd_plugins.distributed.world import World, finish_process, stop_world
from rdd_plugins.evaluation import pipeline, robust
from rdd_plugins.evaluation.robust import attack_batches, clean_correct, robust_correct


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only waits


def _collectives_alone(m) -> None:
    """Collectives as one rank of a larger world sees them when the other ranks add nothing: merges
    and broadcasts leave this rank's values, a gather repeats them (``m``: a monkeypatch)."""
    def no_merge(tensor, world=None):
        return tensor

    m.setattr(work, "gather_to_all", lambda obj, world=None: [obj] * (world.size if world else 1))
    m.setattr(robust, "merge_disjoint", no_merge)
    m.setattr(pipeline, "broadcast_from", lambda obj, src=0, world=None: obj)
    m.setattr(pipeline, "broadcast_tensors", lambda tensors, src, world=None: None)
    m.setattr(pipeline, "gather_to_all", lambda obj, world=None: [obj] * world.size)


@pytest.fixture
def alone(monkeypatch):
    _collectives_alone(monkeypatch)


class MeanThreshold(nn.Module):
    """Class 1 iff the mean pixel > 0.5."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True) - 0.5
        return torch.cat([-m, m], 1) * 50


def random_attack(eps):
    """Moves each point by ±eps at random: whether a point near the threshold breaks is a coin flip,
    so the mask depends on every draw."""
    def attack(x, y):
        sign = torch.randint(0, 2, (x.shape[0], 1, 1, 1)).float() * 2 - 1
        return (x + sign * eps).clamp(0, 1)
    return attack


def near_threshold(n=40, seed=3):
    g = torch.Generator().manual_seed(seed)
    x = (0.5 + (torch.rand(n, 1, 2, 2, generator=g) - 0.5) * 0.1).clamp(0, 1)
    y = (x.flatten(1).mean(1) > 0.5).long()
    return x, y


KEY = (0, "attack", "random", "0.05")


def test_keyed_batches_give_each_rank_the_single_process_entries(alone):
    model, (x, y) = MeanThreshold(), near_threshold()
    correct = clean_correct(model, x, y)
    correct[::7] = False  # points not attacked: the batches are chunks of the attacked ones
    whole = robust_correct(model, random_attack(0.05), x, y, correct, 6, progress=False, key=KEY)
    assert 0 < int(whole.sum()) < int(correct.sum())  # the draws decide: some break, some do not
    batches = attack_batches(correct, 6)
    for size in (2, 3):
        union = torch.zeros_like(whole)
        for rank in range(size):
            part = robust_correct(model, random_attack(0.05), x, y, correct, 6, progress=False, key=KEY,
                                  world=World(rank, size))
            mine = torch.zeros_like(whole)
            for index in work.dealt_to(len(batches), World(rank, size)):
                mine[batches[index]] = True
            assert torch.equal(part[mine], whole[mine])  # this rank's batches, as one process has them
            assert not part[~mine].any()  # and nothing else, before the merge
            union |= part
        assert torch.equal(union, whole)


def test_a_batch_draws_by_its_key_not_by_what_ran_before(alone):
    model, (x, y) = MeanThreshold(), near_threshold()
    correct = clean_correct(model, x, y)
    whole = robust_correct(model, random_attack(0.05), x, y, correct, 6, progress=False, key=KEY)
    torch.manual_seed(12345)  # whatever the global generators hold before: each batch reseeds
    again = robust_correct(model, random_attack(0.05), x, y, correct, 6, progress=False, key=KEY)
    other = robust_correct(model, random_attack(0.05), x, y, correct, 6, progress=False, key=(1, *KEY[1:]))
    assert torch.equal(again, whole) and not torch.equal(other, whole)


def test_run_attacks_keys_attack_and_eps(monkeypatch):
    """run_attacks hands robust_correct a key naming the seed, the attack and the eps."""
    keys = []
    real = pipeline.robust_correct

    def recording(*args, key=None, world=None, **kwargs):
        keys.append(key)
        return real(*args, key=key, world=world, **kwargs)

    monkeypatch.setattr(pipeline, "robust_correct", recording)
    registry = rdd_plugins.get_registry()
    plan, cascade = pipeline.plan_attacks(registry, attacks=["fgsm"], eps=["2/255", "8/255"])
    model, (x, y) = MeanThreshold(), near_threshold(8)
    pipeline.run_attacks(model, registry, plan, cascade, x, y, clean_correct(model, x, y), seed=5, batch_size=3,
                         progress=False, name="t")
    assert keys == [(5, "attack", "fgsm", "2/255"), (5, "attack", "fgsm", "8/255")]


def small_eval_config(make_config, **evaluate):
    """The tiny config with a random set, several models and several attack batches per eps."""
    cfg = make_config()
    cfg["distill"].update(distiller="random", params={})
    cfg["evaluate"].update({"seeds": 3, "epochs": 4, "eval_batch_size": 10, **evaluate})
    return cfg


def test_seed_cache_files_and_messages_belong_to_rank_0(make_config, tmp_path, monkeypatch, capsys):
    from rdd_plugins.distributed import world as world_module
    from rdd_plugins.evaluation import evaluate as evaluate_module
    from rdd_plugins.evaluation.seed_cache import SeedCache

    cfg = small_eval_config(make_config, seeds=2)
    rdd_plugins.distill(cfg, out=tmp_path / "set", progress=False)
    meta = tmp_path / "set" / "meta.json"  # an unfinished set: rank 0 warns of it, once
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "interrupted": True}))

    def refused(*args, **kwargs):
        raise AssertionError("rank 1 touched the seed cache, the folder or the hooks")

    capsys.readouterr()
    with monkeypatch.context() as m:
        for owner, name in ((SeedCache, "get"), (SeedCache, "put"), (evaluate_module, "check_writable"),
                            (evaluate_module, "write_report"), (pipeline, "notify")):
            m.setattr(owner, name, refused)
        m.setattr(world_module, "_world", World(1, 2, 1))  # what current_world() says on rank 1
        _collectives_alone(m)
        rows = rdd_plugins.evaluate(tmp_path / "set", cfg, out=tmp_path / "eval", progress=False)
    assert [len(r["per_seed"]) for r in rows] == [2]
    assert not (tmp_path / "eval").exists()  # rank 1 wrote nothing: no seeds, no report
    assert capsys.readouterr().err == ""  # and said nothing
    rdd_plugins.evaluate(tmp_path / "set", cfg, out=tmp_path / "eval", progress=False)  # one process
    assert "unfinished" in capsys.readouterr().err and (tmp_path / "eval" / "seeds").is_dir()


def test_models_are_dealt_round_robin_a_round_at_a_time(make_config, tmp_path, monkeypatch):
    from rdd_plugins.run.settings import evaluation_config

    cfg = small_eval_config(make_config, eps=["8/255"])
    distilled = rdd_plugins.distill(cfg, out=tmp_path / "set", progress=False)
    config = evaluation_config(distilled, cfg)
    trained, shared = {}, []
    real_train = pipeline.train_on_set
    for rank in range(2):
        with monkeypatch.context() as m:
            _collectives_alone(m)

            def train(*args, desc, rank=rank, **kwargs):
                trained.setdefault(rank, []).append(desc)
                return real_train(*args, desc=desc, **kwargs)

            m.setattr(pipeline, "train_on_set", train)
            m.setattr(pipeline, "share_model", lambda model, owner, world, rank=rank: shared.append((rank, owner)))
            pipeline.evaluate_set(distilled, config, rdd_plugins.get_registry(), progress=False, world=World(rank, 2))
    assert trained == {0: ["random+none train seed 0", "random+none train seed 2"], 1: ["random+none train seed 1"]}
    # round 1: seed 0 from rank 0, seed 1 from rank 1; round 2: seed 2 from rank 0, to every rank
    assert shared == [(0, 0), (0, 1), (0, 0), (1, 0), (1, 1), (1, 0)]


# -- two real ranks ---------------------------------------------------------------------------------

def _rank_main(rank: int, tmp: str) -> None:
    """One of two gloo ranks: ``rdd evaluate`` and the benchmark protocols, results into ``tmp``."""
    import torch.distributed as dist

    from rdd_plugins.distributed import world as world_module

    torch.set_num_threads(1)
    cfg = json.loads(open(f"{tmp}/config.json").read())
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rdv", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    world_module._world = World(rank, 2, rank)
    try:
        if rank == 1:  # rank 1 never reads or writes the seed cache
            from rdd_plugins.evaluation.seed_cache import SeedCache

            def refused(*args, **kwargs):
                raise AssertionError("rank 1 touched the seed cache")
            SeedCache.get = SeedCache.put = refused
        rows = rdd_plugins.evaluate(f"{tmp}/set", cfg, out=f"{tmp}/two", progress=False)
        out = {"rows": rows, "benchmark": _benchmark(tmp, "bench_two"), **_protocols()}
        with open(f"{tmp}/rank{rank}.json", "w") as f:
            json.dump(out, f)
    finally:
        stop_world()


# A radius at which APGD-CE breaks every point of the linear model below (from its random start):
# the rest of the cascade then has nothing to attack, which keeps the test to seconds.
EPS_P = 0.1


def _protocols() -> dict:
    """The benchmark's two AutoAttack paths on a tiny linear model, in the current world."""
    import robustbench.eval as rb_eval
    from rdd_integrations import robustbench_protocol as rbp

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(7, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[-1] = (y[-1] + 1) % 10  # a clean-wrong point
    direct = rbp.run_autoattack_direct(model, x, y, threat_model="Linf", eps=EPS_P, batch_size=3,
                                       seed=4, progress=False)
    from autoattack import AutoAttack

    adversary = AutoAttack(model, norm="Linf", eps=EPS_P, version="standard", device="cpu", seed=4, verbose=False)
    x_adv = rbp.run_in_chunks(adversary, x, y, batch_size=3, seed=4, threat_model="Linf", eps=EPS_P)
    loader = rb_eval.load_clean_dataset
    rb_eval.load_clean_dataset = lambda dataset, n, data_dir, prepr: (x[:n], y[:n])
    try:
        bench = rbp.run_robustbench(model, dataset="cifar10", threat_model="Linf", eps=EPS_P, n_examples=7,
                                    batch_size=3, seed=4, progress=False)
    finally:
        rb_eval.load_clean_dataset = loader
    return {"direct": direct, "robustbench": bench, "x_adv": x_adv.view(torch.int32).flatten().tolist()}


def _benchmark(tmp, out: str) -> dict:
    """``rdd benchmark`` of the set on its own (synthetic) test points: AutoAttack directly."""
    result = rdd_plugins.benchmark(f"{tmp}/set", json.loads(open(f"{tmp}/config.json").read()), out=f"{tmp}/{out}",
                                   n_examples=7, batch_size=2, eps="0.3", progress=False)
    return {k: v for k, v in result.items() if k != "model_info_path"}


def _numbers(tree):
    """Results less wall-clock timings, which no two runs share."""
    if isinstance(tree, dict):
        return {k: _numbers(v) for k, v in tree.items() if "seconds" not in k}
    return [_numbers(v) for v in tree] if isinstance(tree, list) else tree


def test_two_gloo_ranks_match_one_process(make_config, tmp_path):
    cfg = small_eval_config(make_config)  # 3 models: a round of 2, then one with rank 1 idle
    rdd_plugins.distill(cfg, out=tmp_path / "set", progress=False)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    one = rdd_plugins.evaluate(tmp_path / "set", cfg, out=tmp_path / "one", progress=False)
    alone = json.loads(json.dumps({"benchmark": _benchmark(tmp_path, "bench_one"), **_protocols()}))

    # this file run as a script, twice (pytest imports it in importlib mode: no child could import it)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "RDD_NO_PROGRESS": "1"}
    logs = [open(tmp_path / f"rank{r}.log", "w") for r in range(2)]
    ranks = [subprocess.Popen([sys.executable, __file__, str(r), str(tmp_path)], env=env, stderr=logs[r])
             for r in range(2)]
    try:
        codes = [p.wait(timeout=240) for p in ranks]
    finally:
        for p in ranks:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    assert codes == [0, 0], "\n".join((tmp_path / f"rank{r}.log").read_text()[-3000:] for r in range(2))

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank returns the same rows, timings included
    assert _numbers(ranks[0]["rows"]) == _numbers(json.loads(json.dumps(one)))
    for key in ("benchmark", "direct", "robustbench", "x_adv"):
        assert ranks[0][key] == alone[key], key
    assert (tmp_path / "bench_two" / "benchmark.json").is_file()
    written = json.loads((tmp_path / "two" / "results.json").read_text())["results"]
    assert _numbers(written) == _numbers(json.loads((tmp_path / "one" / "results.json").read_text())["results"])
    assert sorted(p.name for p in (tmp_path / "two" / "seeds").iterdir()) == \
        [f"convnet-seed{s}.json" for s in range(3)]


if __name__ == "__main__":  # a rank of test_two_gloo_ranks_match_one_process
    _rank_main(int(sys.argv[1]), sys.argv[2])
    # Past the teardown Gloo's threads can abort (as on CI once this rank had written everything the
    # test reads). An exception above still exits 1.
    finish_process(0)
