"""Name -> factory tables, one per kind of part. Unknown names fail listing the known ones."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any, Callable

from .errors import RddError, UnknownNameError

KINDS = ("datasets", "backbones", "distillers", "regularizers", "attacks", "attack_suites")
_SINGULAR = {
    "datasets": "dataset",
    "backbones": "backbone",
    "distillers": "distiller",
    "regularizers": "regularizer",
    "attacks": "attack",
    "attack_suites": "attack suite",
}


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
        parameters), so that a typo surfaces before minutes of work instead of after them."""
        entry, params = self._call_args(kind, name, params)
        try:
            signature = inspect.signature(entry.factory)
        except (TypeError, ValueError):  # some C callables have no signature; let the call decide
            return
        try:
            signature.bind(*args, **params)
        except TypeError as exc:
            accepted = [p for p in signature.parameters if p not in ("self", "args", "kwargs")]
            raise RddError(f"{_SINGULAR[kind]} {name!r} (plugin {entry.plugin!r}): {exc}; it takes "
                           f"{', '.join(accepted) or 'no parameters'}") from None

    def create(self, kind: str, name: str, *args: Any, **params: Any) -> Any:
        """Build a part: ``factory(*args, **params)``; parameters it does not take are a one-line error.

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
