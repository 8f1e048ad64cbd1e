"""The plugin manager: built-ins first, then entry points one by one, then ``check_pending``.

A plugin that fails to import or to register is reported (``rdd plugins`` lists it) and skipped,
not fatal, unless ``RDD_STRICT_PLUGINS=1``. ``RDD_DISABLE_PLUGINS=a,b`` blocks plugins by name.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from functools import partial
from importlib import metadata

import pluggy

from . import hookspecs
from .errors import RddError
from .registry import KINDS, Registry

hookimpl = pluggy.HookimplMarker("rdd")

ENTRY_POINT_GROUP = "rdd_plugins"
BUILTIN_PLUGINS = (
    "rdd_plugins.builtin.datasets",
    "rdd_plugins.builtin.backbones",
    "rdd_plugins.builtin.regularizers",
    "rdd_plugins.builtin.distillers",
    "rdd_plugins.builtin.suites",
)


@dataclass(frozen=True)
class PluginFailure:
    name: str
    distribution: str
    error: str


_manager: pluggy.PluginManager | None = None
_load_failures: list[PluginFailure] = []  # import / validation problems, found once per manager
_registration_failures: list[PluginFailure] = []  # found anew each time the registry is built
_distributions: dict[str, str] = {}  # plugin name -> the distribution that provides it
_registry: Registry | None = None


def _strict() -> bool:
    return os.environ.get("RDD_STRICT_PLUGINS", "") not in ("", "0", "false", "no")


def _fail(into: list[PluginFailure], name: str, exc: BaseException) -> None:
    distribution = _distributions.get(name, "?")
    message = str(exc) if isinstance(exc, RddError) else f"{type(exc).__name__}: {exc}"
    if _strict():
        raise RddError(f"plugin {name!r} ({distribution}) failed: {message}") from exc
    into.append(PluginFailure(name, distribution, message))


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    # pluggy's load_setuptools_entrypoints stops at the first broken plugin; load each one alone.
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if pm.is_blocked(ep.name):
            continue
        dist = ep.dist.name if ep.dist is not None else "?"
        if pm.has_plugin(ep.name):
            if _distributions.get(ep.name) != dist:
                _fail(_load_failures, ep.name, RddError(
                    f"entry point name {ep.name!r} from {dist} is already used by {_distributions.get(ep.name)}"))
            continue
        _distributions[ep.name] = dist
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not take the tool down
            _fail(_load_failures, ep.name, exc)


def _check_pending(pm: pluggy.PluginManager) -> None:
    # A hookimpl whose name matches no hookspec is a typo in a plugin; drop that plugin, report it.
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            name = pm.get_name(exc.plugin) or repr(exc.plugin)
            pm.unregister(exc.plugin)
            _fail(_load_failures, name, exc)


def get_plugin_manager() -> pluggy.PluginManager:
    global _manager
    if _manager is None:
        pm = pluggy.PluginManager("rdd")
        pm.add_hookspecs(hookspecs)
        for name in filter(None, (n.strip() for n in os.environ.get("RDD_DISABLE_PLUGINS", "").split(","))):
            pm.set_blocked(name)
        for module_name in BUILTIN_PLUGINS:
            pm.register(importlib.import_module(module_name), name=module_name)
        _load_entry_points(pm)
        _check_pending(pm)
        _manager = pm
    return _manager


def get_registry() -> Registry:
    """The registry of every part from every loaded plugin (built once, then cached)."""
    global _registry
    if _registry is None:
        pm = get_plugin_manager()
        registry = Registry()
        _registration_failures.clear()
        for kind in KINDS:
            hook = getattr(pm.hook, f"rdd_register_{kind}")
            # Call each plugin's implementation alone, so every entry knows which plugin made it
            # and one plugin's error does not hide the others' parts. A plugin's parts of one kind
            # are staged and land together, or not at all when its hook fails half-way.
            for impl in hook.get_hookimpls():  # registration order: built-ins first
                staged = Registry()
                try:
                    impl.function(register=partial(staged.add, kind, plugin=impl.plugin_name))
                    registry.absorb(staged)
                except Exception as exc:
                    _fail(_registration_failures, impl.plugin_name, exc)
        _registry = registry
    return _registry


def plugin_failures() -> list[PluginFailure]:
    get_registry()
    return [*_load_failures, *_registration_failures]


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object in-process (tests, notebooks); the registry is rebuilt."""
    global _registry
    registered = get_plugin_manager().register(plugin, name=name)
    _check_pending(get_plugin_manager())
    _registry = None
    return registered


def unregister_plugin(name: str) -> None:
    global _registry
    get_plugin_manager().unregister(name=name)
    _registry = None


def reset() -> None:
    """Forget the manager and registry; the next call loads plugins again (env vars re-read)."""
    global _manager, _registry
    _manager = None
    _registry = None
    _load_failures.clear()
    _registration_failures.clear()
    _distributions.clear()


def plugin_info() -> list[dict]:
    """Every loaded plugin: name, distribution and version, and the hooks it implements."""
    pm = get_plugin_manager()
    out = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: str(item[0])):
        dist = _distributions.get(name, "rdd-plugins" if str(name).startswith("rdd_plugins.") else "?")
        try:
            version = metadata.version(dist) if dist != "?" else "?"
        except metadata.PackageNotFoundError:
            version = "?"
        hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or [])
        out.append({"name": name, "distribution": dist, "version": version, "hooks": hooks})
    return out
