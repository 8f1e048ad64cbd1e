"""sre2l, random and herding keyed by work: the same set whatever the number of ranks (issue 15).

Ranks are simulated in threads of one process: each runs the distiller with its own ``World`` and a
stand-in for ``merge_disjoint`` that sums every rank's tensor as the all-reduce would. The real
2-process torchrun runs are in the distributed tests.
"""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import rdd_plugins
from rdd_plugins.builtin.distillers import sre2l as sre2l_module
from rdd_plugins.builtin.distillers.sre2l import recover_layout
from rdd_plugins.distillation.contract import DistillContext
from rdd_plugins.distributed.work import dealt_to
from rdd_plugins.distributed.world import World


def make_context(make_config, world=World(), regularizer="none", **regularizer_params) -> DistillContext:
    registry = rdd_plugins.get_registry()
    cfg = make_config()
    train = registry.create("datasets", "synthetic", None, "train", **cfg["data"]["params"])

    def make_model():
        return registry.create("backbones", "convnet", 1, 4, 8, train.mean, train.std, width=8, depth=2,
                               norm="batch")

    return DistillContext(train=train, ipc=2, iterations=3, make_model=make_model,
                          regularizer=registry.create("regularizers", regularizer, **regularizer_params),
                          device=torch.device("cpu"), progress=False, seed=7, world=world)


def sre2l(**params):
    params = {"teacher_epochs": 1, "batch_size": 32, **params}
    return rdd_plugins.get_registry().create("distillers", "sre2l", **params)


def copy_state(state: dict) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


class AllReduce:
    """``merge_disjoint`` for ranks simulated in threads: records each rank's tensor, then gives every
    rank their sum, as torch.distributed's all-reduce would."""

    def __init__(self, size: int):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=120)  # a rank that skips the collective fails the test
        self.parts: dict[int, torch.Tensor] = {}
        self.calls: list[dict[int, torch.Tensor]] = []

    def __call__(self, tensor: torch.Tensor, world: World) -> torch.Tensor:
        self.parts[world.rank] = tensor.clone()
        if self.barrier.wait() == 0:
            self.calls.append(dict(self.parts))
        total = sum(self.parts[r] for r in range(self.size))
        self.barrier.wait()  # every rank has summed before the next call overwrites the parts
        return tensor.copy_(total)


def on_ranks(size: int, monkeypatch, work):
    """``work(rank)`` in one thread per rank, with the simulated all-reduce; their results in rank order."""
    reduce = AllReduce(size)
    monkeypatch.setattr(sre2l_module, "merge_disjoint", reduce)
    with ThreadPoolExecutor(size) as pool:
        return [f.result() for f in [pool.submit(work, r) for r in range(size)]], reduce


# -- the recover layout --------------------------------------------------------------------------------

@pytest.mark.parametrize("k, ipc, batch", [(10, 10, 100), (4, 2, 2), (4, 2, 4), (4, 3, 8), (6, 3, 4), (3, 5, 100),
                                           (1000, 2, 100), (7, 1, 1)])
def test_every_image_is_in_exactly_one_recover_batch(k, ipc, batch):
    layout = recover_layout(k, ipc, batch)
    assert torch.equal(torch.cat(layout).sort().values, torch.arange(k * ipc))
    assert all(len(idx) <= max(batch, k) for idx in layout)
    if k >= batch:  # SRe2L's: a block of `batch` classes at one image index
        for idx in layout:
            classes, j = idx // ipc, idx % ipc
            assert len(set(j.tolist())) == 1 and len(idx) <= batch
            assert torch.equal(classes, torch.arange(int(classes[0]), int(classes[0]) + len(idx)))
    else:  # every class at batch // k image indices
        for idx in layout:
            assert sorted(set((idx // ipc).tolist())) == list(range(k)) and len(idx) <= batch


def test_default_layout_on_ten_classes_at_ipc_ten_is_one_batch_of_all_images():
    assert [idx.tolist() for idx in recover_layout(10, 10, 100)] == [list(range(100))]
    assert sre2l().recover_batch == 100
    with pytest.raises(rdd_plugins.RddError, match="recover_batch"):
        sre2l(recover_batch=0)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_ranks_share_the_batches_without_changing_them(size):
    # the layout is the set's, never the world's; dealt round-robin every batch has one owner
    layout = recover_layout(6, 3, 4)
    owners = sorted(b for r in range(size) for b in dealt_to(len(layout), World(r, size, r)))
    assert owners == list(range(len(layout)))


# -- keyed draws: the global stream and the world play no part ------------------------------------------

def test_sre2l_init_is_its_keys_whatever_the_global_stream_and_the_world(make_config):
    # adversarial draws a random start per teacher batch: under the run's ("squeeze-regularizer", ...) key
    params = {"recover_batch": 2, "relabel_crops": 2}
    torch.manual_seed(1)
    one = sre2l(**params).init(make_context(make_config, World(), "adversarial", steps=1))
    torch.manual_seed(2)
    other = sre2l(**params).init(make_context(make_config, World(1, 3, 1), "adversarial", steps=1))
    assert_same_state(one, other)
    # each recover batch starts from its own noise
    layout = recover_layout(4, 2, 2)
    assert not torch.equal(one["latent"][layout[0]], one["latent"][layout[1]])


@pytest.mark.parametrize("name, params", [("random", {}), ("herding", {"feature_epochs": 1})])
def test_subsets_are_their_keys_whatever_the_global_stream_and_the_world(make_config, name, params):
    registry = rdd_plugins.get_registry()
    torch.manual_seed(1)
    one = registry.create("distillers", name, **params).init(make_context(make_config))
    torch.manual_seed(2)
    other = registry.create("distillers", name, **params).init(make_context(make_config, World(1, 2, 1)))
    assert torch.equal(one["images"], other["images"]) and torch.equal(one["labels"], other["labels"])


# -- recover and relabel shared out: bitwise the one-process result ------------------------------------

@pytest.mark.parametrize("size, recover_batch", [(2, 2), (3, 2), (5, 2), (2, 100)])
def test_a_recover_step_on_simulated_ranks_is_the_one_process_step(make_config, monkeypatch, size, recover_batch):
    # 4 batches with recover_batch 2 (rank 4 of 5 owns none), one with 100 (rank 1 of 2 owns none);
    # random-resized crops make each batch's draw matter
    distiller = sre2l(recover_batch=recover_batch, crop_min_scale=0.5, relabel_crops=0)
    context = make_context(make_config)
    contexts = [make_context(make_config, World(rank, size, rank)) for rank in range(size)]
    state = distiller.init(context)
    for _ in range(2):  # a second step: Adam's moments of the merged state carry on
        context.iteration += 1
        reference = copy_state(state)
        losses = distiller.step(reference, context)

        def rank_step(rank, state=state):
            contexts[rank].iteration = context.iteration
            mine = copy_state(state)
            return mine, distiller.step(mine, contexts[rank])

        results, reduce = on_ranks(size, monkeypatch, rank_step)
        for mine, logged in results:
            assert_same_state(mine, reference)
            assert logged == losses
        # one all-reduce per step; each rank's part holds its own batches' rows and zeros elsewhere
        (parts,) = reduce.calls
        layout = recover_layout(4, 2, recover_batch)
        n = reference["latent"].numel()
        for rank, part in parts.items():
            latent = part[:n].view_as(reference["latent"])
            owned = [i for b in dealt_to(len(layout), World(rank, size, rank)) for i in layout[b].tolist()]
            others = [i for i in range(8) if i not in owned]
            assert torch.equal(latent[owned], reference["latent"][owned])
            assert not latent[others].any()
        state = reference


@pytest.mark.parametrize("size", [2, 4])
def test_relabel_views_on_simulated_ranks_are_the_one_process_labels(make_config, monkeypatch, size):
    distiller = sre2l(recover_batch=2, relabel_crops=3, relabel_min_scale=0.5)
    context = make_context(make_config)
    state = distiller.init(context)
    distiller.step(state, context)
    reference = distiller.result(state, context)
    assert reference[2].shape == (8, 3, 4) and reference[3].shape == (8, 3, 5)

    contexts = [make_context(make_config, World(rank, size, rank)) for rank in range(size)]
    results, reduce = on_ranks(size, monkeypatch, lambda rank: distiller.result(state, contexts[rank]))
    for tensors in results:
        assert all(torch.equal(a, b) for a, b in zip(tensors, reference))
    # view v's labels come from its owner only
    (parts,) = reduce.calls
    for rank, part in parts.items():
        views = list(dealt_to(3, World(rank, size, rank)))
        assert torch.equal(part[:, views], reference[2][:, views])
        assert not part[:, [v for v in range(3) if v not in views]].any()


def test_view_boxes_are_their_keys_alone(make_config):
    # view v's boxes are the run's ("relabel", v) draw: more views leave the first ones as they were
    context = make_context(make_config)
    few = sre2l(relabel_crops=2).crop_boxes(8, (8, 8), context)
    more = sre2l(relabel_crops=5).crop_boxes(8, (8, 8), context)
    assert torch.equal(more[:, :2], few) and not torch.equal(more[:, 0], more[:, 1])


# -- the teacher in slices (teacher_shards) ---------------------------------------------------------------

def test_teacher_shards_train_on_ghost_batches(make_config):
    # S = 2 slices per batch, each with its own BatchNorm statistics, their losses weighted by size;
    # the running statistics updated by each clean slice in turn
    context = make_context(make_config)
    ours = context.fresh_model("teacher")
    reference = context.fresh_model("teacher").train()
    sre2l(teacher_shards=2)._squeeze(ours, context)

    optimizer = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    order = torch.randperm(context.train.images.shape[0], generator=context.generator("squeeze", 0))
    for start in range(0, order.numel(), 32):
        idx = order[start:start + 32]
        optimizer.zero_grad()
        loss = sum(torch.nn.functional.cross_entropy(reference(context.train.images[part]), context.train.labels[part])
                   * len(part) / len(idx) for part in idx.tensor_split(2))
        loss.backward()
        optimizer.step()
    for (name, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    with pytest.raises(rdd_plugins.RddError, match="teacher_shards"):
        sre2l(teacher_shards=0)


@pytest.mark.parametrize("size", [2, 4])
def test_a_teacher_in_slices_on_simulated_ranks_is_the_one_process_teacher(make_config, monkeypatch, size):
    # 3 slices per batch (rank 3 of 4 owns none); curvature runs each slice's loss twice
    distiller = sre2l(teacher_shards=3)
    context = make_context(make_config, regularizer="curvature", h=0.3)
    reference = context.fresh_model("teacher")
    distiller._squeeze(reference, context)
    contexts = [make_context(make_config, World(rank, size, rank), "curvature", h=0.3) for rank in range(size)]
    teachers = [ctx.fresh_model("teacher") for ctx in contexts]  # not in the threads: seeded draws are global

    def rank_squeeze(rank):
        distiller._squeeze(teachers[rank], contexts[rank])
        return teachers[rank].state_dict()

    results, reduce = on_ranks(size, monkeypatch, rank_squeeze)
    for state in results:
        assert all(torch.equal(a, b) for a, b in zip(state.values(), reference.state_dict().values()))
    assert len(reduce.calls) == 3  # one merge per teacher batch (96 images, batch_size 32)


# -- whole runs ----------------------------------------------------------------------------------------

def sre2l_config(make_config, iterations):
    cfg = make_config(distiller="sre2l", iterations=iterations, checkpoint_every=1,
                      params={"teacher_epochs": 1, "batch_size": 32, "recover_batch": 2, "crop_min_scale": 0.5,
                              "relabel_crops": 3, "relabel_min_scale": 0.5})
    cfg["backbone"]["params"]["norm"] = "batch"
    return cfg


def test_a_resumed_multi_batch_run_is_the_straight_run(make_config, tmp_path):
    straight = rdd_plugins.distill(sre2l_config(make_config, 4), out=tmp_path / "straight", progress=False)
    rdd_plugins.distill(sre2l_config(make_config, 2), out=tmp_path / "resumed", progress=False)
    torch.manual_seed(123)  # whatever the global stream holds now
    resumed = rdd_plugins.distill(out=tmp_path / "resumed", resume=True, overrides={"distill": {"iterations": 4}},
                                  progress=False)
    for field in ("images", "labels", "soft_labels", "crop_boxes"):
        assert torch.equal(getattr(straight, field), getattr(resumed, field)), field
    straight_log, resumed_log = (json.loads((tmp_path / run / "history.json").read_text())["history"]
                                 for run in ("straight", "resumed"))
    assert [h["recover_loss"] for h in straight_log] == [h["recover_loss"] for h in resumed_log]
