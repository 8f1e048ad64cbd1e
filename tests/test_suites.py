"""Attack suites, cascading, the eps-ball check, several backbones, robustness indices, compare."""

import json

import pytest
import torch
from torch import nn

import rdd_plugins
from rdd_plugins import hookimpl, plugins
from rdd_plugins.errors import RddError
from rdd_plugins.evaluation.metrics import robustness_indices
from rdd_plugins.evaluation.pipeline import run_attacks
from rdd_plugins.evaluation.report import load_results
from rdd_plugins.evaluation.suites import AttackSuite, SuiteAttack, plan_attacks


class MeanThreshold(nn.Module):
    """Class 1 iff the mean pixel > 0.5."""

    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True) - 0.5
        return torch.cat([-m, m], 1) * 50


def nudge(model, eps, *, low=0.0, high=1.0):
    """Adds eps to every pixel of the images whose mean lies in [low, high]: breaks exactly those."""
    def attack(x, y):
        m = x.flatten(1).mean(1).view(-1, 1, 1, 1)
        return torch.where((m >= low) & (m <= high), x + eps, x).clamp(0, 1)
    return attack


def nudge_band(model, eps):
    return nudge(model, eps, low=0.43, high=0.47)


def nudge_l2(model, eps):
    """Moves every image by exactly eps in L2."""
    return lambda x, y: (x + eps / x[0].numel() ** 0.5).clamp(0, 1)


nudge_l2.threat_model = "L2"


def overshoot(model, eps):
    return lambda x, y: (x + 2 * eps).clamp(0, 1)


def not_a_number(model, eps):
    return lambda x, y: torch.full_like(x, float("nan"))


def in_place(model, eps):
    """Moves its input in place, far beyond eps, and returns that same tensor."""
    return lambda x, y: x.add_(0.5).clamp_(0, 1)


class FakeParts:
    @hookimpl
    def rdd_register_attacks(self, register):
        register("nudge", nudge, "test attack")
        register("nudge-band", nudge_band, "test attack breaking means in [0.43, 0.47]")
        register("nudge-l2", nudge_l2, "test L2 attack")
        register("overshoot", overshoot, "leaves its eps ball")
        register("nan", not_a_number, "returns NaN images")
        register("in-place", in_place, "perturbs its input tensor itself")

    @hookimpl
    def rdd_register_attack_suites(self, register):
        register("pair", lambda: AttackSuite((SuiteAttack("nudge", {"low": 0.45}), SuiteAttack("fgsm")),
                                             {"Linf": ("4/255", "0.1")}), "test suite")
        register("broken", lambda: "not a suite", "returns the wrong type")
        register("bad-eps", lambda: AttackSuite((SuiteAttack("fgsm"),), {"linf": ("8/255",)}), "unknown threat")

    @hookimpl
    def rdd_register_backbones(self, register):
        def tiny_mlp(in_channels, num_classes, image_size, mean, std, *, hidden=16):
            from rdd_plugins.builtin.backbones import Normalize
            h, w = image_size if isinstance(image_size, tuple) else (image_size, image_size)
            return nn.Sequential(Normalize(mean, std), nn.Flatten(), nn.Linear(in_channels * h * w, hidden),
                                 nn.ReLU(), nn.Linear(hidden, num_classes))
        register("tiny-mlp", tiny_mlp, "test backbone")


@pytest.fixture
def fake_parts():
    plugins.register_plugin(FakeParts(), name="fake-parts")
    yield
    plugins.unregister_plugin("fake-parts")


def five_points():
    # all class 0 (mean < 0.5); eps 0.1 pushes a mean >= 0.4 over the threshold
    values = torch.tensor([0.30, 0.42, 0.44, 0.46, 0.48])
    return values.view(5, 1, 1, 1).expand(5, 1, 2, 2).contiguous(), torch.zeros(5, dtype=torch.long)


def test_builtin_suites_resolve_to_registered_attacks():
    registry = rdd_plugins.get_registry()
    for name in ("quick", "standard", "autoattack", "dd-robustbench"):
        plan, _ = plan_attacks(registry, suite=name)
        assert plan and all(registry.get("attacks", a.attack) for a in plan)
    quick, cascade = plan_attacks(registry, suite="quick")
    assert [a.attack for a in quick] == ["fgsm", "pgd"] and quick[1].params == {"steps": 20} and cascade
    ddrb, cascade = plan_attacks(registry, suite="dd-robustbench")
    assert ddrb[0].eps == ("1/255", "2/255", "3/255", "4/255", "8/255") and not cascade
    standard, _ = plan_attacks(registry, suite="standard")
    threats = {a.attack: (a.threat_model, a.eps) for a in standard}
    assert threats["pgd-l2"] == ("L2", ("0.5",)) and threats["square"] == ("Linf", ("8/255",))


def test_plan_mixes_a_suite_with_single_attacks_and_eps_lists(fake_parts):
    registry = rdd_plugins.get_registry()
    plan, cascade = plan_attacks(registry, suite="pair", attacks=["nudge-l2"], eps=["8/255"], eps_l2=["1.5"],
                                 attack_params={"fgsm": {}, "nudge": {"high": 0.47}}, cascade="off")
    assert [(a.attack, a.threat_model, a.eps) for a in plan] == [
        ("nudge", "Linf", ("8/255",)), ("fgsm", "Linf", ("8/255",)), ("nudge-l2", "L2", ("1.5",))]
    assert plan[0].params == {"low": 0.45, "high": 0.47}  # the user's table adds to the suite's params
    assert cascade is False


@pytest.mark.parametrize("kwargs, message", [
    ({"attacks": ["fgsm", "pgd"], "attack_params": {"steps": 3}}, "give each its own table"),
    ({"attacks": ["fgsm"], "attack_params": {"pgd": {"steps": 3}}}, "do not run: pgd"),
    ({"attacks": ["pgd", "pgd"]}, "listed twice"),
    ({"attacks": ["pgd"], "eps": ["8"]}, "8/255, not 8"),
    ({"suite": "nope"}, "unknown attack suite 'nope'"),
    ({"suite": "broken"}, "did not return an AttackSuite"),
    ({"suite": "bad-eps"}, "unknown threat models linf"),
    ({"attacks": ["pgd"], "attack_params": {"stepz": 3}}, "unexpected keyword argument 'stepz'"),
    ({"attacks": ["pgd"], "attack_params": {"steps": 0}}, "pgd: steps must be an integer >= 1"),
    ({"suite": "quick", "attacks": ["square"], "attack_params": {"square": {"n_queries": 0.5}}}, "square.*n_queries"),
    ({"attacks": ["fgsm"], "eps_l2": ["0.5"]}, "no L2 attack runs"),
    ({"attacks": ["fgsm"], "eps": ["8/255", "16/510"]}, "the same Linf eps twice"),
])
def test_bad_attack_plans_are_one_line_errors(fake_parts, kwargs, message):
    with pytest.raises(RddError, match=message):
        plan_attacks(rdd_plugins.get_registry(), **kwargs)


def test_cascade_attacks_only_survivors_and_reports_cumulative_accuracy(fake_parts):
    registry = rdd_plugins.get_registry()
    model, (x, y) = MeanThreshold().eval(), five_points()
    correct = torch.ones(5, dtype=torch.bool)
    plan, _ = plan_attacks(registry, attacks=["nudge", "nudge-band", "nudge-l2"], eps=["0.1"], eps_l2=["0.01"],
                           attack_params={"nudge": {"low": 0.45}})
    kwargs = dict(seed=0, batch_size=2, progress=False, name="t")

    per, worst = run_attacks(model, registry, plan, True, x, y, correct, **kwargs)
    a, b = per["nudge"]["0.1"], per["nudge-band"]["0.1"]
    assert (a["attacked"], a["fooled"], a["robust"]) == (5, 2, 0.6)  # breaks 0.46 and 0.48
    assert (b["attacked"], b["fooled"], b["robust"]) == (3, 1, 0.4)  # only survivors; 0.44 breaks
    assert b["success_rate"] == pytest.approx(1 / 3) and worst["Linf"]["0.1"] == 0.4
    assert per["nudge-l2"]["0.01"]["fooled"] == 0 and worst["L2"]["0.01"] == 1.0

    per, worst = run_attacks(model, registry, plan, False, x, y, correct, **kwargs)
    b = per["nudge-band"]["0.1"]
    assert (b["attacked"], b["fooled"], b["robust"]) == (5, 2, 0.6)  # on its own: 0.44 and 0.46
    assert worst["Linf"]["0.1"] == 0.4  # the worst case does not depend on cascading


@pytest.mark.parametrize("attack, message", [("overshoot", "'t overshoot eps=4/255' left its Linf ball"),
                                             ("nan", "'t nan eps=4/255' returned non-finite images"),
                                             ("in-place", "'t in-place eps=4/255' left its Linf ball")])
def test_an_attack_leaving_its_eps_ball_stops_the_evaluation(fake_parts, attack, message):
    registry = rdd_plugins.get_registry()
    model, (x, y) = MeanThreshold().eval(), five_points()
    plan, _ = plan_attacks(registry, attacks=[attack], eps=["4/255"])
    with pytest.raises(RddError, match=message):
        run_attacks(model, registry, plan, True, x, y, torch.ones(5, dtype=torch.bool), seed=0, batch_size=5,
                    progress=False, name="t")


def test_nothing_left_to_attack_has_no_success_rate(fake_parts):
    registry = rdd_plugins.get_registry()
    model, (x, y) = MeanThreshold().eval(), five_points()
    plan, _ = plan_attacks(registry, attacks=["nudge", "nudge-band"], eps=["0.3"])  # nudge breaks all
    per, worst = run_attacks(model, registry, plan, True, x, y, torch.ones(5, dtype=torch.bool), seed=0,
                             batch_size=5, progress=False, name="t")
    assert per["nudge"]["0.3"]["success_rate"] == 1.0 and worst["Linf"]["0.3"] == 0.0
    assert per["nudge-band"]["0.3"]["attacked"] == 0 and per["nudge-band"]["0.3"]["success_rate"] is None


def test_robustness_indices_match_the_published_formulas():
    out = robustness_indices([0.8], [0.6, 0.4, 0.2], [1.0], [2.0, 4.0, 6.0])
    assert out["RR"] == pytest.approx(100 * (1 - 0.4 / 0.6), abs=1e-3)  # BEARD
    assert out["I-RR"] == pytest.approx(100 * (1 - 0.4 * 0.6 / 0.64), abs=1e-3)  # ROME
    assert out["AE"] == pytest.approx(60.0) and out["CREI"] == pytest.approx((out["RR"] + 60.0) / 2, abs=1e-3)
    assert robustness_indices([0.5], [0.5, 0.5])["RR"] == 0.0  # BEARD's degenerate case


def test_suite_and_several_backbones_in_one_evaluation(fake_parts, make_config, tmp_path):
    cfg = make_config()
    cfg["evaluate"].update(suite="pair", backbone="convnet,tiny-mlp", seeds=1, epochs=10, eps=[],
                           attack_params={}, backbone_params={"tiny-mlp": {"hidden": 8}})
    rdd_plugins.distill(cfg, out=tmp_path / "set", progress=False)
    rows = rdd_plugins.evaluate(tmp_path / "set", cfg, out=tmp_path / "eval", progress=False)
    assert [r["backbone"] for r in rows] == ["convnet", "tiny-mlp"]
    assert rows[0]["evaluation"]["backbone_params"] == {"width": 8, "depth": 2}  # the set's own architecture
    assert rows[1]["evaluation"]["backbone_params"] == {"hidden": 8}
    for r in rows:
        s = r["summary"]
        assert set(s["attacks"]) == {"nudge", "fgsm"} and set(s["worst"]["Linf"]) == {"4/255", "0.1"}
        # cascaded: the second attack's cumulative accuracy never exceeds the first's
        assert s["attacks"]["fgsm"]["0.1"]["robust"]["mean"] <= s["attacks"]["nudge"]["0.1"]["robust"]["mean"]
        assert s["worst"]["Linf"]["0.1"] == s["attacks"]["fgsm"]["0.1"]["robust"]
        assert s["indices"] is None  # cascaded accuracies are not BEARD's per-attack inputs
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| gm+none | tiny-mlp | 2 |" in report and "suite `pair`" in report
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["schema"] == "rdd-results/2" and len(saved["results"]) == 2

    cfg["evaluate"].update(cascade="off", backbone="convnet", backbone_params={})
    (row,) = rdd_plugins.evaluate(tmp_path / "set", cfg, progress=False)
    assert {"RR", "I-RR", "AE", "CREI"} <= set(row["summary"]["indices"])
    assert row["summary"]["attacks"]["fgsm"]["0.1"]["robust"]["mean"] >= row["summary"]["worst"]["Linf"]["0.1"]["mean"]


def test_a_suite_replaces_the_attack_settings_stored_with_the_set(make_config, tmp_path):
    cfg = make_config()  # stores pgd with flat steps = 3 and eps 2/255, 8/255 in the set's config
    cfg["evaluate"].update(seeds=1, epochs=3, n_test=20)
    rdd_plugins.distill(cfg, out=tmp_path / "set", progress=False)
    (row,) = rdd_plugins.evaluate(tmp_path / "set", overrides={"evaluate": {"suite": "quick"}}, progress=False)
    assert [(a["attack"], a["params"], a["eps"]) for a in row["evaluation"]["attacks"]] == [
        ("fgsm", {}, ["8/255"]), ("pgd", {"steps": 20}, ["8/255"])]
    (row,) = rdd_plugins.evaluate(tmp_path / "set", overrides={"evaluate": {"eps": ["4/255"]}}, progress=False)
    assert [(a["attack"], a["params"], a["eps"]) for a in row["evaluation"]["attacks"]] == [
        ("pgd", {"steps": 3}, ["4/255"])]  # without a new plan the set's own attack settings stay


def test_backbone_family_and_parameter_tables_are_checked():
    registry = rdd_plugins.get_registry()
    with pytest.raises(RddError, match="'timm:' is a family of backbones: name a member"):
        registry.get("backbones", "timm:")
    with pytest.raises(RddError, match="drop the 'variant' parameter"):
        registry.check("backbones", "timm:resnet18", 1, 10, (8, 8), (0.5,), (0.5,), variant="resnet50")
    from rdd_plugins.config import resolve
    from rdd_plugins.evaluation.pipeline import backbone_specs
    cfg = resolve(base={"evaluate": {"backbone_params": {"timm:resnet18": {"drop_rate": 0.1}}}})
    with pytest.raises(RddError, match="tables for backbones that do not run: timm:resnet18"):
        backbone_specs(cfg)


def test_compare_merges_runs_and_reads_schema_1(make_config, tmp_path):
    cfg = make_config()
    cfg["evaluate"].update(seeds=1, epochs=5)
    rdd_plugins.distill(cfg, out=tmp_path / "a", progress=False)
    rdd_plugins.evaluate(tmp_path / "a", out=tmp_path / "a" / "evaluation", progress=False)
    old = {"schema": "rdd-results/1", "results": [{
        "label": "old-gm", "dataset": "synthetic", "set": {"ipc": 2},
        "evaluation": {"backbone": "convnet", "seeds": 1, "epochs": 5, "attack": "pgd", "attack_params": {},
                       "eps": ["2/255", "8/255"], "n_test": 10},
        "summary": {"clean": {"mean": 50.0, "std": 0.0, "n": 1},
                    "robust": {"2/255": {"mean": 40.0, "std": 0.0, "n": 1}, "8/255": {"mean": 20.0, "std": 0.0, "n": 1}}},
    }]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    rows = rdd_plugins.compare([tmp_path / "a", tmp_path / "old.json"], out=tmp_path / "cmp")
    assert [r["label"] for r in rows] == ["gm+none", "old-gm"]
    twice = rdd_plugins.compare([tmp_path / "a" / "evaluation", tmp_path / "a" / "evaluation" / "results.json"])
    assert [r["label"] for r in twice] == ["gm+none (a)", "gm+none (a #2)"]  # named after the set folder
    (tmp_path / "future.json").write_text(json.dumps({"schema": "rdd-results/9", "results": []}))
    with pytest.raises(RddError, match="schema 'rdd-results/9'"):
        rdd_plugins.compare([tmp_path / "future.json"])
    assert rows[1]["summary"]["worst"]["Linf"]["8/255"]["mean"] == 20.0
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| old-gm | convnet | 2 |" in report and "| gm+none | convnet | 2 |" in report
    assert (tmp_path / "cmp" / "robust_vs_eps.png").stat().st_size > 5000
    assert load_results(tmp_path / "cmp")[0]["label"] == "gm+none"
    with pytest.raises(RddError, match="no results.json"):
        rdd_plugins.compare([tmp_path / "missing"])


def test_compare_pools_indices_across_ipcs(make_config, tmp_path):
    runs = []
    for ipc in (1, 2):
        cfg = make_config(ipc=ipc)
        cfg["evaluate"].update(seeds=1, epochs=5, n_test=40, attack="fgsm,pgd", cascade="off",
                               attack_params={"pgd": {"steps": 2}}, eps=["4/255", "32/255"])
        rdd_plugins.distill(cfg, out=tmp_path / f"ipc{ipc}", progress=False)
        rdd_plugins.evaluate(tmp_path / f"ipc{ipc}", out=tmp_path / f"ipc{ipc}" / "evaluation", progress=False)
        runs.append(tmp_path / f"ipc{ipc}")
    rows = rdd_plugins.compare(runs, out=tmp_path / "cmp")
    (pooled,) = json.loads((tmp_path / "cmp" / "results.json").read_text())["across_ipcs"]
    assert pooled["ipc"] == [1, 2] and pooled["backbone"] == "convnet"
    clean = [r["summary"]["clean"]["mean"] / 100 for r in rows]
    attacked = [s["robust"]["mean"] / 100 for r in rows for per in r["summary"]["attacks"].values()
                for s in per.values()]
    assert len(attacked) == 8  # 2 IPCs x 2 attacks x 2 eps
    expected = robustness_indices(clean, attacked)
    assert pooled["RR"] == expected["RR"] and pooled["I-RR"] == expected["I-RR"]
    assert "## Across IPCs" in (tmp_path / "cmp" / "report.md").read_text()
