"""The plugin manager: built-ins first, then entry points one by one, then ``check_pending``.

A plugin that fails to import or to register is reported (``rdd plugins`` lists it) and skipped,
not fatal, unless ``RDD_STRICT_PLUGINS=1``. ``RDD_DISABLE_PLUGINS=a,b`` blocks plugins by name;
the built-in plugins cannot be blocked (a plugin replaces a built-in part with ``override=True``).

Hooks are called through pluggy, so ``tryfirst``/``trylast``, wrappers (``wrapper=True``,
``hookwrapper=True``) and implementations taking only some of a hook's arguments behave as pluggy
documents them. Each implementation is guarded: one that raises is left out of that call and
reported under its plugin's name, and the other plugins' implementations still run.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Generator
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from typing import Any, Callable, Iterable

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
    "rdd_plugins.builtin.set_formats",
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


def _disabled_plugins() -> list[str]:
    """The names in ``RDD_DISABLE_PLUGINS``; naming a built-in plugin is an error, as pytest refuses
    ``-p no:`` for its essential plugins: without them no run can be configured at all."""
    names = [n.strip() for n in os.environ.get("RDD_DISABLE_PLUGINS", "").split(",") if n.strip()]
    builtin = [n for n in names if n in BUILTIN_PLUGINS]
    if builtin:
        raise RddError(f"RDD_DISABLE_PLUGINS: plugin {builtin[0]!r} is built in and cannot be disabled; "
                       f"to replace one of its parts, register yours with override=True")
    return names


def get_plugin_manager() -> pluggy.PluginManager:
    global _manager
    if _manager is None:
        pm = pluggy.PluginManager("rdd")
        pm.add_hookspecs(hookspecs)
        for name in _disabled_plugins():
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
            _register_parts(pm, kind, registry)
        _registry = registry
    return _registry


def _register_parts(pm: pluggy.PluginManager, kind: str, registry: Registry) -> None:
    """Run ``rdd_register_<kind>`` once through pluggy, every plugin with a ``register`` of its own.

    Each plugin's parts are staged apart, so every entry knows which plugin made it, and they land
    together, or not at all when one of the plugin's implementations fails. They land in the order
    the plugins were loaded (built-ins first), whatever order the hooks ran in, so a plugin cannot
    take a built-in's name by running first: only ``override=True`` replaces a name.
    """
    staged: dict[str, Registry] = {}

    def own_register(plugin_name: str) -> dict[str, Any]:
        parts = staged.setdefault(plugin_name, Registry())
        return {"register": partial(parts.add, kind, plugin=plugin_name)}

    hook = getattr(pm.hook, f"rdd_register_{kind}")
    # Every implementation gets its plugin's own register in place of this shared placeholder.
    _, failures = call_hook(hook, {"register": None}, own_kwargs=own_register)
    failed: dict[str, Exception] = {}
    for plugin_name, exc in failures:
        failed.setdefault(plugin_name, exc)  # a plugin is reported once per kind, for its first failure
    for plugin_name in _load_order(pm, staged):
        error = failed.get(plugin_name)
        if error is None:
            try:
                registry.absorb(staged[plugin_name])
                continue
            except RddError as exc:
                error = exc
        _fail(_registration_failures, plugin_name, error)


def _load_order(pm: pluggy.PluginManager, plugin_names: Iterable[str]) -> list[str]:
    position = {name: i for i, (name, _) in enumerate(pm.list_name_plugin())}
    return sorted(plugin_names, key=lambda name: position.get(name, len(position)))


Failure = tuple[str, Exception]  # (plugin name, what its implementation raised)


def call_hook(hook: pluggy.HookCaller, kwargs: dict[str, Any], *,
              own_kwargs: Callable[[str], dict[str, Any]] | None = None) -> tuple[Any, list[Failure]]:
    """Call ``hook`` with ``kwargs`` through pluggy, every implementation guarded.

    Returns pluggy's answer and the failures: an implementation that raises is reported and counts
    as having answered ``None``; a wrapper that raises is reported and steps aside, the outcome
    passing through it unchanged. ``own_kwargs(plugin_name)`` gives arguments that replace the
    shared ones for that plugin's implementations (each plugin its own ``register``).
    """
    failures: list[Failure] = []
    impls = [_guarded(impl, failures, own_kwargs(impl.plugin_name) if own_kwargs else {})
             for impl in hook.get_hookimpls()]
    firstresult = bool(hook.spec and hook.spec.opts.get("firstresult"))
    # pluggy has no public call over a chosen list of implementations; _hookexec is what
    # HookCaller.__call__ itself uses, and runs the monitoring that add_hookcall_monitoring set.
    return hook._hookexec(hook.name, impls, kwargs, firstresult), failures


def _guarded(impl: pluggy.HookImpl, failures: list[Failure], own: dict[str, Any]) -> pluggy.HookImpl:
    """A copy of ``impl`` (same plugin, options and arguments) whose failures go to ``failures``."""
    def failed(exc: Exception) -> None:
        failures.append((impl.plugin_name, exc))

    def own_args(args: tuple, kwargs: dict) -> tuple[list, dict]:
        # pluggy passes the arguments the implementation names, in its order; swap in the plugin's own
        return ([own.get(name, value) for name, value in zip(impl.argnames, args)],
                {name: own.get(name, value) for name, value in kwargs.items()})

    guard = _guard_wrapper if impl.wrapper or impl.hookwrapper else _guard_call
    return pluggy.HookImpl(impl.plugin, impl.plugin_name, guard(impl.function, own_args, failed), impl.opts)


def _guard_call(function: Callable[..., Any], own_args: Callable, failed: Callable) -> Callable[..., Any]:
    @functools.wraps(function)  # pluggy reads the arguments to pass from the wrapped signature
    def guarded(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = own_args(args, kwargs)
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            failed(exc)
            return None
    return guarded


def _guard_wrapper(function: Callable[..., Any], own_args: Callable, failed: Callable) -> Callable[..., Any]:
    """Guard a wrapper of either style: pluggy drives both as generators (send the outcome, or for
    ``wrapper=True`` throw the call's exception), so the guard relays to the plugin's generator."""
    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any):
        args, kwargs = own_args(args, kwargs)
        try:
            inner = function(*args, **kwargs)
            next(inner)
        except StopIteration:
            failed(RuntimeError("its wrapper did not yield"))
            return (yield)
        except Exception as exc:
            failed(exc)
            return (yield)  # step aside: the call goes on as if this wrapper were not there
        try:
            outcome = yield
        except BaseException as thrown:  # wrapper=True: what the call below raised
            return _resume(inner, inner.throw, thrown, failed)
        return _resume(inner, inner.send, outcome, failed)
    return guarded


def _resume(inner: Generator, step: Callable[[Any], Any], outcome: Any, failed: Callable) -> Any:
    """Run the plugin's wrapper after the call; a failure of its own is reported and ``outcome``
    passes through as if the wrapper had not been there."""
    try:
        step(outcome)
    except StopIteration as stop:
        return stop.value
    except Exception as exc:
        if exc is not outcome:  # re-raising the call's own exception is not the wrapper failing
            failed(exc)
    else:
        inner.close()
        failed(RuntimeError("its wrapper yielded twice"))
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


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
