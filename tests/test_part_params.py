"""Part parameters are type-checked against their factory before anything is built."""

import inspect
from typing import Literal

import pytest

import rdd_plugins
from rdd_plugins import hookimpl, plugins
from rdd_plugins.errors import RddError
from rdd_plugins.plugins import get_registry

CONVNET_ARGS = (1, 10, (8, 8), (0.5,), (0.5,))  # what the loop passes a backbone: channels, classes, size, stats


@pytest.mark.parametrize("kind, name, args, params, message", [
    ("distillers", "gm", (), {"lr_img": "abc"}, "distiller 'gm' parameter lr_img must be a number (float), got 'abc'"),
    ("regularizers", "curvature", (), {"lam": "big"},
     "regularizer 'curvature' parameter lam must be a number (float), got 'big'"),
    ("backbones", "convnet", CONVNET_ARGS, {"width": "16"},
     "backbone 'convnet' parameter width must be an integer (int), got '16'"),
])
def test_a_parameter_of_the_wrong_type_is_a_one_line_error_before_the_part_is_built(kind, name, args, params,
                                                                                    message):
    registry = get_registry()
    for attempt in (lambda: registry.create(kind, name, *args, **params),
                    lambda: registry.check(kind, name, *args, **params),
                    lambda: registry.check_params(kind, name, **params)):  # before the positional args exist
        with pytest.raises(RddError) as err:
            attempt()
        assert str(err.value) == message


def test_an_integer_is_a_valid_float_and_none_a_valid_optional():
    registry = get_registry()
    distiller = registry.create("distillers", "gm", lr_img=1, outer_loop=None, inner_loop=2)
    assert distiller.images.lr == 1
    assert registry.create("regularizers", "curvature", h=2, lam=0).lam == 0.0


@pytest.mark.parametrize("kind, name, params, message", [
    ("distillers", "sre2l", {"relabel_crops": True}, "relabel_crops must be an integer (int), got True"),
    ("backbones", "convnet", {"depth": 2.5}, "depth must be an integer (int), got 2.5"),
    ("distillers", "gm", {"outer_loop": "3"}, "outer_loop must be an integer (int) or None, got '3'"),
    ("distillers", "gm", {"clamp": "yes"}, "clamp must be true or false (bool), got 'yes'"),
    ("distillers", "dm", {"init": 0}, "init must be a string (str), got 0"),
])
def test_bools_ints_optionals_and_strings_are_told_apart(kind, name, params, message):
    with pytest.raises(RddError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_registry().check_params(kind, name, **params)


@pytest.mark.parametrize("kind", ["datasets", "backbones", "distillers", "regularizers", "attacks"])
def test_every_builtin_part_accepts_its_own_defaults(kind):
    registry = get_registry()
    for name in registry.names(kind):
        if name.endswith(":"):  # a family needs a member's name
            continue
        signature = inspect.signature(registry.get(kind, name).factory)
        defaults = {p.name: p.default for p in signature.parameters.values()
                    if p.default is not p.empty and p.kind is not p.POSITIONAL_ONLY}
        registry.check_params(kind, name, **defaults)


def test_a_factory_without_annotations_is_checked_by_its_defaults_and_rich_hints_are_left_alone():
    def unannotated(*, steps=3, rate=0.5, name="x", flag=False, anything=None):
        return (steps, rate, name, flag, anything)

    def richly_annotated(*, sizes: list[int] = (), mode: Literal["a", "b"] = "a"):
        return sizes, mode

    def unresolvable(*, ref: "NotImportable" = None, steps: int = 1):  # noqa: F821
        return ref, steps

    class Parts:
        @hookimpl
        def rdd_register_regularizers(self, register):
            register("unannotated", unannotated)
            register("rich", richly_annotated)
            register("unresolvable", unresolvable)

    plugins.register_plugin(Parts(), name="parts")
    registry = rdd_plugins.get_registry()
    with pytest.raises(RddError, match="regularizer 'unannotated' parameter steps must be an integer"):
        registry.create("regularizers", "unannotated", steps="3")
    assert registry.create("regularizers", "unannotated", rate=1, anything=[1]) == (3, 1, "x", False, [1])
    # a rich annotation is the factory's own business, even where its default is a plain str
    assert registry.create("regularizers", "rich", sizes="abc", mode=1) == ("abc", 1)
    # hints that cannot be resolved here: the defaults still tell
    assert registry.create("regularizers", "unresolvable", ref=1) == (1, 1)
    with pytest.raises(RddError, match="regularizer 'unresolvable' parameter steps must be an integer"):
        registry.create("regularizers", "unresolvable", steps="2")


def test_a_wrong_type_in_the_config_fails_the_run_with_the_one_line_error(make_config):
    cfg = make_config(regularizer="curvature", regularizer_params={"lam": "big"})
    with pytest.raises(RddError, match="regularizer 'curvature' parameter lam must be a number"):
        rdd_plugins.distill(cfg, progress=False)
