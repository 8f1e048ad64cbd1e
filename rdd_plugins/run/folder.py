"""Run folders: what a folder holds, checking an output place before any work, and replacing a
finished run only once its successor has something to show.

A fresh distillation is written into a staging folder beside the target (``.NAME.rdd-new``) and
swapped in when it saves its first checkpoint (or its set, for runs without checkpoints). Until
then the target, with its set and whatever was derived from it (evaluation/, benchmark/), is
untouched; a run that fails before that point leaves it exactly as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..checkpoint import CHECKPOINT_FILE
from ..errors import RddError
from ..storage import IMAGES_FILE, META_FILE, temporary_prefix

CONFIG_FILE = "config.toml"
HISTORY_FILE = "history.json"
RUN_FILES = {CONFIG_FILE, IMAGES_FILE, META_FILE, CHECKPOINT_FILE, HISTORY_FILE}
# What `rdd evaluate` / `rdd benchmark` write from a folder's set, into evaluation/, benchmark/ or an
# --out inside the run folder: they describe that set, and go when it is replaced.
DERIVED_NAMES = ("evaluation", "benchmark")
DERIVED_MARKERS = ("results.json", "benchmark.json")
DERIVED_FILES = {"results.json", "report.md", "config.toml", "benchmark.json"}
DERIVED_DIRS = {"seeds", "model_info", "models"}  # models: a study's trained evaluation models


def derived_folders(folder: Path) -> list[Path]:
    """The sub-folders of a run folder that rdd's evaluations and benchmarks of its set wrote."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and (
        p.name in DERIVED_NAMES or any(p.rglob(marker) for marker in DERIVED_MARKERS)))


def _left_by_a_killed_write(name: str, finals) -> bool:
    return any(name.startswith(temporary_prefix(final)) for final in finals)


def _written_by_rdd(path: Path, root: Path) -> bool:
    inner = path.relative_to(root).parts
    return path.name in DERIVED_FILES or path.suffix == ".png" or bool(DERIVED_DIRS & set(inner[:-1])) \
        or _left_by_a_killed_write(path.name, DERIVED_FILES) or path.name.startswith(".") and ".png." in path.name


def foreign_files(folder: Path) -> list[str]:
    """Files in a run folder that no rdd command wrote. They are never deleted: their presence
    stops anything that would replace the run."""
    if not folder.is_dir():
        return []
    derived = derived_folders(folder)
    foreign = [p.name for p in folder.iterdir()
               if p.name not in RUN_FILES and p not in derived and not _left_by_a_killed_write(p.name, RUN_FILES)]
    for root in derived:
        foreign += [str(p.relative_to(folder)) for p in root.rglob("*")
                    if p.is_file() and not _written_by_rdd(p, root)]
    return sorted(foreign)


def check_no_foreign_files(folder: Path, shown: str | Path, action: str) -> None:
    stray = foreign_files(folder)
    if stray:
        raise RddError(f"{shown} holds files that are not a run's ({', '.join(stray[:5])}); move them "
                       f"elsewhere before {action}, or choose another folder")


def check_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Fail now, in one line, if ``folder`` cannot be created or written: before minutes of work."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RddError(f"{what} {folder} is a file, not a folder")
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise RddError(f"{what} {folder}: {existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise RddError(f"{what} {folder} is not writable ({exc.strerror or exc})") from None
    return folder


def holds_run(folder: Path) -> bool:
    """A distilled set, or a checkpoint a run could resume from."""
    return (folder / IMAGES_FILE).exists() or (folder / CHECKPOINT_FILE).exists()


def _describe(folder: Path) -> str:
    import json

    try:
        meta = json.loads((folder / META_FILE).read_text())
        made = f"{meta.get('distiller', '?')}+{meta.get('regularizer', '?')}, ipc {meta.get('ipc', '?')}"
        if meta.get("interrupted"):
            return f"an unfinished run ({made}, interrupted at {meta.get('completed_iterations')}/{meta.get('iterations')})"
        return f"a distilled set ({made})"
    except (OSError, ValueError, AttributeError):
        return "an unfinished run (a checkpoint)"


def _staging(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.rdd-new"


def _retired(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.rdd-old"


def recover_interrupted_swap(folder: Path) -> None:
    """A process killed between the two renames of a swap left the old run under its retired name
    and nothing under the folder's: put the old run back (the new one never finished a swap)."""
    retired = _retired(folder)
    if retired.exists() and not folder.exists():
        os.rename(retired, folder)
    elif retired.exists():
        shutil.rmtree(retired)


class StagedRun:
    """A fresh run's folder. Constructing it checks the target (before any work); ``open()``
    gives the folder to write into; ``publish()`` swaps it into place; ``discard()`` drops it."""

    def __init__(self, target: str | Path, *, overwrite: bool = False) -> None:
        self.target = Path(target)
        check_writable(self.target, "run folder")
        if Path.cwd().resolve().is_relative_to(self.target.resolve()):
            raise RddError(f"run folder {self.target} is the current folder or holds it; name a folder inside it")
        shown, self.target = self.target, self.target.resolve()  # a swap renames: work on the real path
        recover_interrupted_swap(self.target)
        if self.target.is_dir():
            check_no_foreign_files(self.target, shown, "writing a run there")
            if holds_run(self.target) and not overwrite:
                raise RddError(f"{shown} already holds {_describe(self.target)}; pass --overwrite "
                               f"to replace it, or --resume {shown} to continue it")
        self.path = _staging(self.target)
        self.published = False

    def open(self) -> Path:
        """Create the staging folder (a stale one, from a run that died before its first
        checkpoint, holds nothing to keep) and return it."""
        if self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)
        return self.path

    def publish(self) -> Path:
        """Swap the staged run in: the previous run (and its evaluation, benchmark) goes."""
        if self.published:
            return self.target
        retired = _retired(self.target)
        if self.target.exists():
            os.rename(self.target, retired)
        os.rename(self.path, self.target)
        if retired.exists():
            shutil.rmtree(retired)
        self.path, self.published = self.target, True
        return self.target

    def discard(self) -> None:
        """The run failed before it had anything to show: the target stays as it was."""
        if not self.published:
            shutil.rmtree(self.path, ignore_errors=True)
