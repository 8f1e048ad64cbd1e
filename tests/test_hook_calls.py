"""Hooks go through pluggy: call order, wrappers and partial arguments, each plugin still guarded."""

import types

import pytest

import rdd_plugins
from rdd_plugins import hookimpl, plugins
from rdd_plugins.errors import RddError
from rdd_plugins.distillation.contract import DistillStep
from rdd_plugins.lifecycle import notify


def a_step(iteration=1):
    return DistillStep(iteration=iteration, iterations=3, losses={"match_loss": 0.5}, seconds=0.1,
                       config={}, images=lambda: (None, None))


class StepObserver:
    """Notes its name in ``seen`` when it observes a step; answers ``answer``."""

    def __init__(self, name, seen, answer=None):
        self.name, self.seen, self.answer = name, seen, answer

    @hookimpl
    def rdd_distill_step(self, step):
        self.seen.append(self.name)
        return self.answer


class EagerObserver(StepObserver):
    @hookimpl(tryfirst=True)
    def rdd_distill_step(self, step):
        return super().rdd_distill_step(step)


def test_a_tryfirst_step_observer_runs_before_a_plugin_loaded_after_it():
    seen = []
    # pluggy calls the plugin loaded last first, unless an implementation says tryfirst
    plugins.register_plugin(EagerObserver("eager", seen), name="eager")
    plugins.register_plugin(StepObserver("plain", seen), name="plain")
    notify("rdd_distill_step", step=a_step())
    assert seen == ["eager", "plain"]


def test_tryfirst_and_trylast_order_the_registration_hooks_and_every_part_keeps_its_plugin():
    ran = []

    def attacks_plugin(name, **order):
        class Plugin:
            @hookimpl(**order)
            def rdd_register_attacks(self, register):
                ran.append(name)
                register(f"{name}-attack", lambda model, eps: (lambda x, y: x))
        return Plugin()

    plugins.register_plugin(attacks_plugin("eager", tryfirst=True), name="eager")
    plugins.register_plugin(attacks_plugin("plain"), name="plain")
    plugins.register_plugin(attacks_plugin("late", trylast=True), name="late")
    registry = rdd_plugins.get_registry()
    assert ran == ["eager", "plain", "late"]
    for name in ran:
        assert registry.get("attacks", f"{name}-attack").plugin == name
    assert plugins.plugin_failures() == []


def test_a_tryfirst_plugin_cannot_take_a_builtin_name_by_running_first():
    class Grabber:
        @hookimpl(tryfirst=True)
        def rdd_register_backbones(self, register):
            register("convnet", lambda *a, **k: None)

    plugins.register_plugin(Grabber(), name="grabber")
    assert rdd_plugins.get_registry().get("backbones", "convnet").plugin == "rdd_plugins.builtin.backbones"
    assert [f.name for f in plugins.plugin_failures()] == ["grabber"]


def test_an_old_style_hookwrapper_runs_around_the_registration_hooks():
    events = []

    class Wrapper:
        @hookimpl(hookwrapper=True)
        def rdd_register_attacks(self, register):
            events.append("before")
            register("wrapped", lambda model, eps: (lambda x, y: x))  # a wrapper may register too
            outcome = yield
            events.append(("after", outcome.exception is None))

    plugins.register_plugin(Wrapper(), name="wrapper")
    registry = rdd_plugins.get_registry()
    assert events == ["before", ("after", True)]
    assert registry.get("attacks", "wrapped").plugin == "wrapper"
    assert "pgd" in registry.names("attacks") and plugins.plugin_failures() == []


def test_a_new_style_wrapper_sees_and_can_change_the_answers_of_a_lifecycle_hook():
    events = []

    class Stopper:
        @hookimpl(wrapper=True)
        def rdd_distill_step(self, step):
            events.append(("before", step.iteration))
            answers = yield
            events.append(("after", list(answers)))
            return [*answers, True]  # ask for an early stop on top of what the others said

    plugins.register_plugin(StepObserver("observer", [], answer="noted"), name="observer")
    plugins.register_plugin(Stopper(), name="stopper")
    assert notify("rdd_distill_step", step=a_step(2)) == ["noted", True]
    assert events == [("before", 2), ("after", ["noted"])]


def test_a_new_style_wrapper_stops_a_real_run_early(make_config):
    class StopAtTwo:
        @hookimpl(wrapper=True)
        def rdd_distill_step(self, step):
            answers = yield
            return [*answers, step.iteration == 2 or None]

    plugins.register_plugin(StopAtTwo(), name="stop-at-two")
    ds = rdd_plugins.distill(make_config(iterations=5), progress=False)
    assert ds.meta["stopped_early"] is True and ds.meta["completed_iterations"] == 2


class FailsBeforeYield:
    @hookimpl(wrapper=True)
    def rdd_distill_step(self, step):
        raise ValueError("cannot start")
        yield  # pragma: no cover


class FailsAfterYield:
    @hookimpl(hookwrapper=True)
    def rdd_distill_step(self, step):
        yield
        raise ValueError("cannot finish")


@pytest.mark.parametrize("wrapper, error", [(FailsBeforeYield, "cannot start"), (FailsAfterYield, "cannot finish")])
def test_a_failing_wrapper_is_named_and_steps_aside(wrapper, error, capsys, monkeypatch):
    plugins.register_plugin(StepObserver("observer", [], answer=True), name="observer")
    plugins.register_plugin(wrapper(), name="broken-wrapper")
    assert notify("rdd_distill_step", step=a_step()) == [True]  # the early stop still counts
    assert f"plugin 'broken-wrapper' failed in rdd_distill_step: ValueError: {error}" in capsys.readouterr().err
    monkeypatch.setenv("RDD_STRICT_PLUGINS", "1")
    with pytest.raises(RddError, match="broken-wrapper"):
        notify("rdd_distill_step", step=a_step())


def test_a_failing_implementation_under_a_wrapper_is_named_and_the_others_still_answer(capsys):
    class Failing:
        @hookimpl
        def rdd_distill_step(self, step):
            raise ValueError("logger is down")

    seen_by_wrapper = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def rdd_distill_step(self, step):
            answers = yield
            seen_by_wrapper.append(list(answers))
            return answers

    plugins.register_plugin(StepObserver("observer", [], answer=True), name="observer")
    plugins.register_plugin(Failing(), name="flaky-logger")
    plugins.register_plugin(Wrapper(), name="wrapper")
    assert notify("rdd_distill_step", step=a_step()) == [True]
    assert seen_by_wrapper == [[True]]
    assert "plugin 'flaky-logger' failed in rdd_distill_step: ValueError: logger is down" in capsys.readouterr().err


def test_a_wrapper_failing_in_a_registration_hook_is_reported_and_its_parts_dropped():
    class Broken:
        @hookimpl(hookwrapper=True)
        def rdd_register_backbones(self, register):
            register("broken-net", lambda *a, **k: None)
            yield
            raise RuntimeError("boom")

    plugins.register_plugin(Broken(), name="broken")
    registry = rdd_plugins.get_registry()
    assert "broken-net" not in registry.names("backbones") and "convnet" in registry.names("backbones")
    (failure,) = plugins.plugin_failures()
    assert failure.name == "broken" and "boom" in failure.error


class Counter:
    """Implementations taking none of their hook's arguments: legal in pluggy."""

    def __init__(self):
        self.steps, self.finished = 0, 0

    @hookimpl
    def rdd_distill_step(self):
        self.steps += 1

    @hookimpl
    def rdd_distill_finished(self):
        self.finished += 1


def test_implementations_taking_none_of_the_arguments_are_called(make_config, capsys):
    counter = Counter()
    plugins.register_plugin(counter, name="counter")

    counted = []
    module = types.ModuleType("counting")  # a plugin module's function as well as a method

    @hookimpl
    def rdd_distill_step():
        counted.append(1)

    module.rdd_distill_step = rdd_distill_step
    plugins.register_plugin(module, name="counting")
    rdd_plugins.distill(make_config(iterations=2), progress=False)
    assert (counter.steps, counter.finished, len(counted)) == (2, 1, 2)
    assert "warning" not in capsys.readouterr().err
