"""Progress bars for long loops (tqdm), silenced with ``enabled=False`` or RDD_NO_PROGRESS=1."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def bar(iterable=None, *, total=None, desc: str = "", enabled: bool = True, leave: bool = False, initial: int = 0):
    disable = not enabled or os.environ.get("RDD_NO_PROGRESS", "") not in ("", "0")
    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=leave, dynamic_ncols=True,
                initial=initial)
