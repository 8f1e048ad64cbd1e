"""Progress bars for long loops (tqdm), silenced with ``enabled=False`` or RDD_NO_PROGRESS=1."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_wanted(enabled: bool = True) -> bool:
    """Whether a bar should show: ``enabled`` and RDD_NO_PROGRESS unset (or "0")."""
    return enabled and os.environ.get("RDD_NO_PROGRESS", "") in ("", "0")


def bar(iterable=None, *, total=None, desc: str = "", enabled: bool = True, leave: bool = False, initial: int = 0,
        unit: str = "it"):
    """A tqdm bar on stderr; ``unit`` names what one step counts ("batch", "epoch", "point")."""
    return tqdm(iterable, total=total, desc=desc, disable=not progress_wanted(enabled), leave=leave,
                dynamic_ncols=True, initial=initial, unit=unit)


def context_progress(context) -> bool:
    """Whether a distiller's own long phase should show a bar: ``context.progress``. Contexts built
    by hand (tests, plugins written before the field) lack it and get the default, bars on."""
    return getattr(context, "progress", True)
