import inspect
from importlib import metadata

import pytest

import rdd_plugins
from rdd_plugins import hookimpl, hookspecs, plugins
from rdd_plugins.errors import RddError, UnknownNameError

EXPECTED = {
    "datasets": {"fashion-mnist", "cifar10", "cifar100", "synthetic"},
    "backbones": {"convnet", "timm:"},
    "distillers": {"gm", "dsa", "dm", "random", "herding", "sre2l"},
    "regularizers": {"none", "curvature", "cure", "gradient-norm", "adversarial"},
    "attacks": {"fgsm", "pgd", "pgd-l2", "cw", "apgd-ce", "apgd-t", "fab", "square", "autoattack", "mifgsm",
                "jitter"},
    "attack_suites": {"quick", "standard", "autoattack", "dd-robustbench"},
    "set_formats": {"dc", "mtt", "sre2l", "folder", "tensors"},
}


def test_builtin_and_integration_parts_are_registered():
    registry = rdd_plugins.get_registry()
    for kind, names in EXPECTED.items():
        assert names <= set(registry.names(kind)), kind
    assert plugins.plugin_failures() == []
    # Integrations come through the entry-point group, named by their entry point.
    assert registry.get("attacks", "pgd").plugin == "torchattacks"
    assert registry.get("datasets", "fashion-mnist").plugin == "torchvision"


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownNameError) as err:
        rdd_plugins.get_registry().get("regularizers", "curvatur")
    message = str(err.value)
    assert "unknown regularizer 'curvatur'" in message and "curvature" in message and "none" in message
    assert "\n" not in message


def test_in_process_plugin_registers_and_unregisters():
    class EchoAttack:
        @hookimpl
        def rdd_register_attacks(self, register):
            register("identity", lambda model, eps, **kw: (lambda x, y: x), "returns its input")

    plugins.register_plugin(EchoAttack(), name="echo")
    try:
        entry = rdd_plugins.get_registry().get("attacks", "identity")
        assert entry.plugin == "echo"
        attack = rdd_plugins.get_registry().create("attacks", "identity", None, 0.1)
        assert attack("x", "y") == "x"
    finally:
        plugins.unregister_plugin("echo")
    assert "identity" not in rdd_plugins.get_registry().names("attacks")


def test_duplicate_name_from_another_plugin_is_reported_not_fatal():
    class Clash:
        @hookimpl
        def rdd_register_backbones(self, register):
            register("convnet", lambda *a, **k: None)

    plugins.register_plugin(Clash(), name="clash")
    registry = rdd_plugins.get_registry()
    assert registry.get("backbones", "convnet").plugin == "rdd_plugins.builtin.backbones"
    failures = plugins.plugin_failures()
    assert any(f.name == "clash" and "already registered" in f.error for f in failures)


def test_hookimpl_with_a_typo_is_dropped_and_reported():
    class Typo:
        @hookimpl
        def rdd_register_atacks(self, register):
            pass

    plugins.register_plugin(Typo(), name="typo")
    assert any(f.name == "typo" for f in plugins.plugin_failures())
    assert not plugins.get_plugin_manager().has_plugin("typo")


class _BrokenEntryPoint:
    name = "broken"
    dist = None

    def load(self):
        raise ImportError("no module named 'missing_dependency'")


def test_broken_entry_point_is_reported_and_skipped(monkeypatch):
    real = metadata.entry_points

    def fake(group):
        return [*real(group=group), _BrokenEntryPoint()]

    monkeypatch.setattr(plugins.metadata, "entry_points", fake)
    registry = rdd_plugins.get_registry()
    assert "pgd" in registry.names("attacks")  # the others still load
    (failure,) = [f for f in plugins.plugin_failures() if f.name == "broken"]
    assert "missing_dependency" in failure.error

    plugins.reset()
    monkeypatch.setenv("RDD_STRICT_PLUGINS", "1")
    with pytest.raises(RddError, match="broken"):
        rdd_plugins.get_registry()


def test_disabled_plugin_is_not_loaded(monkeypatch):
    monkeypatch.setenv("RDD_DISABLE_PLUGINS", "torchattacks")
    assert "pgd" not in rdd_plugins.get_registry().names("attacks")


LIFECYCLE = {"rdd_distill_step", "rdd_distill_finished", "rdd_evaluation_finished"}


def test_every_hookspec_is_documented_and_exercised_by_a_test():
    from pathlib import Path

    specs = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("rdd_")]
    assert {f.__name__ for f in specs} == {f"rdd_register_{k}" for k in EXPECTED} | LIFECYCLE
    test_sources = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    for f in specs:
        assert f.__doc__ and len(f.__doc__.strip()) > 80, f"{f.__name__} has no documentation"
        if f.__name__ not in LIFECYCLE:
            assert list(inspect.signature(f).parameters) == ["register"]
        assert f"def {f.__name__}(" in test_sources, f"no test implements {f.__name__}"


def test_bad_factory_parameter_is_a_one_line_error():
    with pytest.raises(RddError, match="regularizer 'curvature'"):
        rdd_plugins.get_registry().create("regularizers", "curvature", radius=3)


def test_a_hook_failing_half_way_registers_none_of_its_parts_and_is_reported_once():
    class HalfBroken:
        @hookimpl
        def rdd_register_attacks(self, register):
            register("half-ok", lambda model, eps: (lambda x, y: x))
            raise RuntimeError("boom")

    class Other:
        @hookimpl
        def rdd_register_backbones(self, register):
            register("other-net", lambda *a, **k: None)

    plugins.register_plugin(HalfBroken(), name="half")
    assert "half-ok" not in rdd_plugins.get_registry().names("attacks")
    plugins.register_plugin(Other(), name="other")  # rebuilds the registry
    failures = [f for f in plugins.plugin_failures() if f.name == "half"]
    assert len(failures) == 1 and "boom" in failures[0].error


def test_failures_name_the_distribution_of_an_entry_point(monkeypatch):
    class Dist:
        name = "acme-rdd"

    class Broken(_BrokenEntryPoint):
        dist = Dist()

    real = metadata.entry_points
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: [*real(group=group), Broken()])
    (failure,) = [f for f in plugins.plugin_failures() if f.name == "broken"]
    assert failure.distribution == "acme-rdd"


def test_in_process_dataset_and_regularizer_plugins_drive_a_distillation(make_config):
    import torch
    from torch.func import grad

    from rdd_plugins.data import ImageData

    calls = []

    class DoubledGradient:
        def parameter_gradient(self, loss_fn, params, images, labels):
            calls.append(images.shape)
            return {k: 2 * g for k, g in grad(loss_fn)(params, images, labels).items()}

    class Parts:
        @hookimpl
        def rdd_register_datasets(self, register):
            def blobs(root, split, **params):
                torch.manual_seed(0 if split == "train" else 1)
                labels = torch.arange(3).repeat_interleave(10)
                images = (labels.view(-1, 1, 1, 1) / 3 + 0.2 * torch.rand(30, 1, 8, 8)).clamp(0, 1)
                return ImageData(images, labels, ["a", "b", "c"], (0.5,), (0.3,), name="blobs")

            register("blobs", blobs, "three grey levels")

        @hookimpl
        def rdd_register_regularizers(self, register):
            register("doubled", DoubledGradient, "twice the plain gradient")

    plugins.register_plugin(Parts(), name="parts")
    try:
        cfg = make_config(regularizer="doubled", iterations=2)
        cfg["data"] = {"dataset": "blobs"}
        ds = rdd_plugins.distill(cfg, progress=False)
        assert ds.meta["dataset"]["name"] == "blobs" and ds.images.shape == (6, 1, 8, 8)
        # the start's vmap check (2 images of a class), then batch_real 16 capped at the 10 per class
        assert calls[0][0] == 2 and calls[1:] and all(shape[0] == 10 for shape in calls[1:])
    finally:
        plugins.unregister_plugin("parts")


def test_override_replaces_a_name_and_the_listing_says_who_won():
    class Better:
        @hookimpl
        def rdd_register_attacks(self, register):
            register("fgsm", lambda model, eps: (lambda x, y: x), "my fgsm", override=True)

    plugins.register_plugin(Better(), name="better")
    entry = rdd_plugins.get_registry().get("attacks", "fgsm")
    assert entry.plugin == "better" and entry.overrides == "torchattacks"
    listed = {e["name"]: e for e in rdd_plugins.get_registry().as_dict()["attacks"]}
    assert listed["fgsm"]["overrides"] == "torchattacks" and "overrides" not in listed["pgd"]
    assert plugins.plugin_failures() == []


def test_plugin_info_lists_distribution_version_and_hooks():
    info = {p["name"]: p for p in plugins.plugin_info()}
    assert info["torchattacks"]["distribution"] == "rdd-plugins"
    assert info["torchattacks"]["hooks"] == ["rdd_register_attacks"]
    assert info["torchattacks"]["version"] == rdd_plugins.__version__


def test_an_override_wins_whichever_plugin_loads_first():
    from rdd_plugins.registry import Registry

    def staged(plugin, override):
        reg = Registry()
        reg.add("attacks", "pgd", lambda model, eps: plugin, override=override, plugin=plugin)
        return reg

    for order in (["better", "torchattacks"], ["torchattacks", "better"]):
        registry = Registry()
        for plugin in order:
            registry.absorb(staged(plugin, override=plugin == "better"))
        entry = registry.get("attacks", "pgd")
        assert entry.plugin == "better" and entry.overrides == "torchattacks", order
    registry = Registry()
    registry.absorb(staged("a", override=False))
    with pytest.raises(RddError, match="already registered by plugin 'a'"):
        registry.absorb(staged("b", override=False))


@pytest.mark.parametrize("builtin", plugins.BUILTIN_PLUGINS)
def test_a_builtin_plugin_cannot_be_disabled(monkeypatch, builtin):
    monkeypatch.setenv("RDD_DISABLE_PLUGINS", f"torchattacks, {builtin}")
    with pytest.raises(RddError) as err:
        rdd_plugins.get_registry()
    message = str(err.value)
    assert f"plugin {builtin!r} is built in and cannot be disabled" in message and "\n" not in message


def test_registration_hooks_are_typed_and_documented_in_param_style():
    from typing import get_type_hints

    from rdd_plugins.registry import Register

    for kind in EXPECTED:
        spec = getattr(hookspecs, f"rdd_register_{kind}")
        assert get_type_hints(spec)["register"] is Register, kind
        assert ":param register:" in spec.__doc__, kind
    for name, argument in (("rdd_distill_step", "step"), ("rdd_distill_finished", "result"),
                           ("rdd_evaluation_finished", "report")):
        assert f":param {argument}:" in getattr(hookspecs, name).__doc__
    assert list(inspect.signature(Register.__call__).parameters) == ["self", "name", "factory", "description",
                                                                      "override"]


def test_the_distiller_contract_is_written_once_in_the_protocol():
    from rdd_plugins.distillation.contract import Distiller

    hook_doc = hookspecs.rdd_register_distillers.__doc__
    assert "rdd_plugins.distillation.contract.Distiller" in hook_doc
    contract = "".join(filter(None, (Distiller.__doc__, Distiller.init.__doc__, Distiller.step.__doc__,
                                     Distiller.result.__doc__)))
    for detail in ("iterations_needed", "soft_labels", "crop_boxes", "preview", "knowledge distillation"):
        assert detail not in hook_doc, detail
    for detail in ("soft_labels", "crop_boxes", "preview", "knowledge distillation", "factory(**params)"):
        assert detail in contract, detail
    assert "iterations_needed" in inspect.getsource(Distiller)
