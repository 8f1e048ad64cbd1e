"""Name -> factory tables, one per kind of part. Unknown names fail listing the known ones."""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol

from .errors import RddError, UnknownNameError

KINDS = ("datasets", "backbones", "distillers", "regularizers", "attacks", "attack_suites", "set_formats")
_SINGULAR = {
    "datasets": "dataset",
    "backbones": "backbone",
    "distillers": "distiller",
    "regularizers": "regularizer",
    "attacks": "attack",
    "attack_suites": "attack suite",
    "set_formats": "set format",
}


class Register(Protocol):
    """The ``register`` callback that every ``rdd_register_*`` hook receives.

    Call it once per part the plugin provides. Names are global per kind: a name that another
    plugin already registered is an error, unless one of the two registrations says
    ``override=True``; that one wins, whichever plugin loads first.
    """

    def __call__(self, name: str, factory: Callable[..., Any], description: str = "",
                 override: bool = False) -> None:
        """Register one part.

        :param name:
            What users write to pick the part (``--distiller NAME``). A name ending in ``:``
            registers a family: ``family:member`` then calls the factory with ``variant="member"``.
        :param factory:
            Builds the part; its signature is the hook's contract. Its parameters' annotations (or,
            without one, their int/float/bool/str defaults) are checked against the user's values
            before any work starts.
        :param description:
            One line for ``rdd plugins``.
        :param override:
            Replace a part of the same name from another plugin instead of failing.
        """


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    plugin: str
    overrides: str = ""  # the plugin whose entry of the same name this one replaced
    override: bool = False  # registered with override=True: wins over a plain entry in either order


class Registry:
    """All parts that plugins registered, by kind and name."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def add(self, kind: str, name: str, factory: Callable[..., Any], description: str = "",
            override: bool = False, *, plugin: str = "?") -> None:
        """The ``register`` callback hooks receive. ``override=True`` replaces an existing name
        (the listing then says which plugin won); without it a taken name is an error."""
        if not isinstance(name, str) or not name:
            raise RddError(f"plugin {plugin!r} registered a {_SINGULAR[kind]} with an empty or non-string name")
        if not callable(factory):
            raise RddError(f"plugin {plugin!r} registered {_SINGULAR[kind]} {name!r} with a factory that is not callable")
        table = self._entries[kind]
        if name in table and not override:
            raise RddError(
                f"{_SINGULAR[kind]} {name!r} from plugin {plugin!r} is already registered by plugin "
                f"{table[name].plugin!r} (pass override=True to replace it)"
            )
        table[name] = Entry(kind, name, factory, description, plugin, override=bool(override))

    def absorb(self, staged: "Registry") -> None:
        """Add every entry of ``staged``, or none of them if one name is already taken.

        An entry registered with ``override=True`` wins over a plain one whichever plugin loads
        first (entry points come in no fixed order): a plain entry arriving after it is dropped and
        recorded as the one it overrides. Two plain entries of one name are an error."""
        entries = [e for table in staged._entries.values() for e in table.values()]
        for e in entries:
            previous = self._entries[e.kind].get(e.name)
            if previous is not None and not e.override and not previous.override:
                raise RddError(f"{_SINGULAR[e.kind]} {e.name!r} from plugin {e.plugin!r} is already "
                               f"registered by plugin {previous.plugin!r} (pass override=True to replace it)")
        for e in entries:
            table = self._entries[e.kind]
            previous = table.get(e.name)
            if previous is not None and previous.override and not e.override:
                table[e.name] = replace(previous, overrides=e.plugin)  # the earlier override stays
            else:
                table[e.name] = replace(e, overrides=previous.plugin if previous else "")

    def get(self, kind: str, name: str) -> Entry:
        """The entry called ``name``; ``family:variant`` falls back to a family entry ``family:``."""
        table = self._entries[kind]
        if name in table:
            if name.endswith(":"):
                raise RddError(f"{name!r} is a family of {kind}: name a member, e.g. {name}NAME")
            return table[name]
        family, sep, variant = name.partition(":")
        if sep and variant and f"{family}:" in table:
            return table[f"{family}:"]
        known = ", ".join(n + ("NAME" if n.endswith(":") else "") for n in sorted(table)) or "(none)"
        raise UnknownNameError(f"unknown {_SINGULAR[kind]} {name!r}; known: {known}")

    def _call_args(self, kind: str, name: str, params: dict) -> tuple[Entry, dict]:
        entry = self.get(kind, name)
        if entry.name != name:  # a family member: the family's factory gets the member's name
            if "variant" in params:
                raise RddError(f"{name!r} already names the {_SINGULAR[kind]}; drop the 'variant' parameter")
            params = {"variant": name.partition(":")[2], **params}
        return entry, params

    def check(self, kind: str, name: str, *args: Any, **params: Any) -> None:
        """Fail now, in one line, if ``factory(*args, **params)`` would not bind (unknown or missing
        parameters) or a parameter has the wrong type, so that a typo surfaces before minutes of
        work instead of after them. Nothing is built."""
        self._check(kind, name, args, params, partial=False)

    def check_params(self, kind: str, name: str, **params: Any) -> None:
        """:meth:`check` for the user's named parameters alone, before the positional arguments
        exist (a backbone's channels and classes come from the dataset): unknown names and wrong
        types fail, missing arguments do not."""
        self._check(kind, name, (), params, partial=True)

    def _check(self, kind: str, name: str, args: tuple, params: dict, *, partial: bool) -> None:
        entry, params = self._call_args(kind, name, params)
        signature = _signature(entry.factory)
        if signature is None:
            return
        try:
            (signature.bind_partial if partial else signature.bind)(*args, **params)
        except TypeError as exc:
            accepted = [p for p in signature.parameters if p not in ("self", "args", "kwargs")]
            raise RddError(f"{_SINGULAR[kind]} {name!r} (plugin {entry.plugin!r}): {exc}; it takes "
                           f"{', '.join(accepted) or 'no parameters'}") from None
        _check_types(f"{_SINGULAR[kind]} {name!r}", entry.factory, signature, params)

    def create(self, kind: str, name: str, *args: Any, **params: Any) -> Any:
        """Build a part: ``factory(*args, **params)``; a parameter it does not take, or of a type it
        rules out, is a one-line error (see :meth:`check`).

        A family entry (registered as ``"timm:"``) is called with ``variant=`` the rest of the name.
        """
        self.check(kind, name, *args, **params)
        entry, params = self._call_args(kind, name, params)
        return entry.factory(*args, **params)

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[kind])

    def as_dict(self) -> dict[str, list[dict[str, str]]]:
        return {
            kind: [
                {"name": e.name, "plugin": e.plugin, "description": e.description,
                 **({"overrides": e.overrides} if e.overrides else {})}
                for e in sorted(self._entries[kind].values(), key=lambda e: e.name)
            ]
            for kind in KINDS
        }


# --- parameter types -------------------------------------------------------------------------------
# Only the plain types a config file can hold are checked; anything richer is left to the factory.

_TYPE_WORDS = {int: "an integer (int)", float: "a number (float)", bool: "true or false (bool)",
               str: "a string (str)", type(None): "None"}


def _signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # some C callables have no signature; let the call decide
        return None


def _type_hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # a hint naming what is not importable here: fall back to the defaults
        return {}


def _expected_types(annotation: Any, default: Any) -> tuple[type, ...] | None:
    """The plain types a parameter accepts; ``None`` where that cannot be told (no hint, a rich one)."""
    if annotation is inspect.Parameter.empty:
        return (type(default),) if type(default) in (int, float, bool, str) else None
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    members = typing.get_args(annotation) if union else (annotation,)
    plain = all(any(m is t for t in _TYPE_WORDS) for m in members)  # hints need not be hashable
    return members if plain else None


def _accepts(expected: type, value: Any) -> bool:
    if isinstance(value, bool):  # bool is an int to Python, never a count or a rate to a user
        return expected is bool
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def _check_types(part: str, factory: Callable[..., Any], signature: inspect.Signature, params: dict) -> None:
    """A one-line error for the first of ``params`` whose type the factory's parameter rules out."""
    hints = _type_hints(factory)
    for name, value in params.items():
        parameter = signature.parameters.get(name)
        if parameter is None or parameter.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        if value is None and parameter.default is None:  # ``x: int = None``, an implicit Optional
            continue
        expected = _expected_types(hints.get(name, parameter.empty), parameter.default)
        if expected is not None and not any(_accepts(t, value) for t in expected):
            wanted = " or ".join(_TYPE_WORDS[t] for t in expected)
            raise RddError(f"{part} parameter {name} must be {wanted}, got {value!r}")
