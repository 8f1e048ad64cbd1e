import pytest
import torch
from torch import nn

import rdd_plugins
from rdd_plugins.evaluation.metrics import without_timings
from rdd_plugins.evaluation.robust import clean_correct, robust_correct


class ThresholdModel(nn.Module):
    """Class 1 iff the mean pixel > 0.5; records whether it was in train mode when called."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))
        self.calls_in_train_mode = 0

    def forward(self, x):
        self.calls_in_train_mode += int(self.training)
        m = x.flatten(1).mean(1, keepdim=True) - 0.5
        return torch.cat([-m, m], 1) * self.scale


def points():
    # 0.3 -> class 0, 0.7 -> class 1; labels make the last two wrong clean.
    x = torch.tensor([0.3, 0.7, 0.3, 0.7, 0.3, 0.7]).view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous()
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    return x, y


def test_robust_counts_only_points_correct_clean_and_attacked():
    model = ThresholdModel()
    x, y = points()
    correct = clean_correct(model, x, y)
    assert correct.tolist() == [True, True, True, True, False, False]

    def oracle_attack(images, labels):  # makes every attacked point *correct*
        return torch.where(labels.view(-1, 1, 1, 1) == 1, torch.ones_like(images), torch.zeros_like(images))

    robust = robust_correct(model, oracle_attack, x, y, correct, progress=False)
    assert robust.tolist() == [True, True, True, True, False, False]  # wrong-clean points stay wrong

    def flip_first_two(images, labels):
        out = images.clone()
        out[:2] = 1.0 - out[:2]
        return out

    robust = robust_correct(model, flip_first_two, x, y, correct, progress=False)
    assert robust.tolist() == [False, False, True, True, False, False]


def test_attacks_see_the_model_in_eval_mode():
    model = ThresholdModel().train()
    x, y = points()
    seen = []

    def spy(images, labels):
        seen.append(model.training)
        return images

    robust_correct(model, spy, x, y, torch.ones(6, dtype=torch.bool), progress=False)
    assert seen == [False]


def test_attack_returning_out_of_range_images_is_rejected():
    x, y = points()
    with pytest.raises(rdd_plugins.RddError, match=r"outside \[0, 1\]"):
        robust_correct(ThresholdModel(), lambda a, b: a + 2, x, y, torch.ones(6, dtype=torch.bool), progress=False)


@pytest.mark.parametrize("name, eps", [("pgd", 8 / 255), ("fgsm", 4 / 255)])
def test_registered_linf_attacks_stay_in_the_pixel_eps_ball(name, eps):
    torch.manual_seed(0)
    model = rdd_plugins.get_registry().create("backbones", "convnet", 1, 3, 8, (0.5,), (0.25,), width=4, depth=2)
    model.eval()
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 3, (16,))
    attack = rdd_plugins.get_registry().create("attacks", name, model, eps)
    x_adv = attack(x, y)
    delta = (x_adv - x).abs().max().item()
    assert 0.5 * eps < delta <= eps + 1e-6  # pixel units: 8/255 moves a pixel by at most 8 grey levels
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_pgd_lowers_accuracy_of_a_trained_model(make_config):
    cfg = make_config()
    cfg["evaluate"].update(eps=["0", "16/255", "64/255"], epochs=40, seeds=1)
    ds = rdd_plugins.distill({**cfg, "distill": {**cfg["distill"], "distiller": "random", "params": {}}},
                             progress=False)
    (result,) = rdd_plugins.evaluate(ds, cfg, progress=False)
    s = result["summary"]
    pgd = s["attacks"]["pgd"]
    assert s["clean"]["mean"] > 45  # learnable from 2 images per class: chance is 25 (4 classes)
    assert pgd["0"]["robust"]["mean"] == s["clean"]["mean"]  # eps 0 cannot fool anything
    assert pgd["0"]["success_rate"]["mean"] == 0
    assert pgd["64/255"]["robust"]["mean"] < pgd["16/255"]["robust"]["mean"] <= s["clean"]["mean"]
    assert pgd["64/255"]["success_rate"]["mean"] > 0
    assert s["worst"]["Linf"]["64/255"] == pgd["64/255"]["robust"]  # one attack: worst case = that attack


def test_evaluate_writes_report_config_and_plots(make_config, tmp_path):
    cfg = make_config()
    ds = rdd_plugins.distill(cfg, out=tmp_path / "set", progress=False)
    (result,) = rdd_plugins.evaluate(tmp_path / "set", out=tmp_path / "eval", progress=False)
    names = {p.name for p in (tmp_path / "eval").iterdir()}
    assert {"results.json", "report.md", "config.toml", "robust_vs_eps.png", "distilled_images.png"} <= names
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| gm+none | convnet | 2 |" in report and "Linf 8/255" in report and "| pgd | 8/255 |" in report
    assert result["evaluation"]["seeds"] == 2 and len(result["per_seed"]) == 2
    assert ds.meta["config"]["distill"]["ipc"] == 2


def test_an_interrupted_evaluation_continues_from_its_finished_seeds(make_config, tmp_path, monkeypatch):
    import json

    from rdd_plugins.evaluation import pipeline

    rdd_plugins.distill(make_config(), out=tmp_path / "set", progress=False)
    seeds_dir = tmp_path / "eval" / "seeds"
    (full,) = rdd_plugins.evaluate(tmp_path / "set", out=tmp_path / "eval", progress=False)
    assert sorted(p.name for p in seeds_dir.iterdir()) == ["convnet-seed0.json", "convnet-seed1.json"]
    expected = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]

    # As if killed while the second model trained: the first seed's file is all that was kept.
    (seeds_dir / "convnet-seed1.json").unlink()
    (tmp_path / "eval" / "results.json").unlink()
    trained = []
    real_train = pipeline.train_on_set
    monkeypatch.setattr(pipeline, "train_on_set", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    (again,) = rdd_plugins.evaluate(tmp_path / "set", out=tmp_path / "eval", progress=False)
    assert len(trained) == 1  # only the missing seed was trained again

    def numbers(tree):  # the results less wall-clock timings, which no two runs share
        if isinstance(tree, dict):
            return {k: numbers(v) for k, v in tree.items() if "seconds" not in k}
        return [numbers(v) for v in tree] if isinstance(tree, list) else tree

    assert numbers(json.loads((tmp_path / "eval" / "results.json").read_text())["results"]) == numbers(expected)
    assert numbers(again["summary"]) == numbers(full["summary"])

    # Another evaluation config, or another set, never reuses them.
    rdd_plugins.evaluate(tmp_path / "set", out=tmp_path / "eval", progress=False,
                         overrides={"evaluate": {"epochs": 3}})
    assert len(trained) == 3
    # A damaged file is computed again, not an error.
    (seeds_dir / "convnet-seed0.json").write_text("{not json")
    rdd_plugins.evaluate(tmp_path / "set", out=tmp_path / "eval", progress=False,
                         overrides={"evaluate": {"epochs": 3}})
    assert len(trained) == 4


def test_dsa_evaluation_training_augments_every_minibatch_the_same_way_under_a_seed(make_config, monkeypatch):
    # evaluate.augment = "dsa" is DSA's evaluation protocol: each training minibatch passes through
    # one DSA transform. The model must see augmented batches (not the set's images), shaped as they
    # were, and the same seed must give the same model.
    from rdd_plugins.evaluation import train as train_module
    from rdd_plugins.run.parts import training_augment

    cfg = make_config()
    cfg["distill"].update(distiller="random", params={})
    ds = rdd_plugins.distill(cfg, progress=False)
    augment = training_augment("dsa", ds, torch.device("cpu"))
    assert training_augment("none", ds, torch.device("cpu")) is None
    torch.manual_seed(0)
    out = augment(ds.images)
    assert out.shape == ds.images.shape and not torch.equal(out, ds.images)

    seen = []
    real_train_model = train_module.train_model

    def watching(model, images, labels, **kw):
        inner = kw["augment"]

        def recorded(batch):
            result = inner(batch)
            seen.append((batch.clone(), result.clone()))
            return result

        return real_train_model(model, images, labels, **{**kw, "augment": recorded})

    monkeypatch.setattr(train_module, "train_model", watching)
    cfg["evaluate"].update(augment="dsa", epochs=3, seeds=1, eps=["8/255"])
    (first,) = rdd_plugins.evaluate(ds, cfg, progress=False)
    assert len(seen) == 3 and all(not torch.equal(b, a) for b, a in seen)
    (second,) = rdd_plugins.evaluate(ds, cfg, progress=False)
    assert without_timings(first["summary"]) == without_timings(second["summary"])
    assert first["evaluation"]["augment"] == "dsa"
    ds.soft_labels = torch.zeros(ds.labels.shape[0], 4)  # a teacher's labels of the unaugmented images
    with pytest.raises(rdd_plugins.RddError, match="needs a set with hard labels"):
        rdd_plugins.evaluate(ds, cfg, progress=False)
    cfg["evaluate"]["augment"] = "mixup"
    with pytest.raises(rdd_plugins.RddError, match="evaluate.augment must be one of none, dsa"):
        rdd_plugins.evaluate(ds, cfg, progress=False)
