"""Which files an imported set came from, by SHA-256, so a set folder says what it was made of."""

from __future__ import annotations

import hashlib
from pathlib import Path

LISTED_FILES = 16  # beyond this (image folders) only the digest of the listing is kept


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_digests(source: Path, files: list[Path]) -> dict:
    """``sha256``: the file's own digest for one file (what ``sha256sum`` prints), else the digest of
    the sorted ``"<sha256>  <relative path>"`` lines; ``file_sha256`` per file for a few files."""
    base = source if source.is_dir() else source.parent
    per_file = {_relative(path, base): sha256_file(path) for path in sorted(set(files))}
    if len(per_file) == 1:
        combined = next(iter(per_file.values()))
    else:
        listing = "".join(f"{digest}  {name}\n" for name, digest in sorted(per_file.items()))
        combined = hashlib.sha256(listing.encode()).hexdigest()
    out = {"files": len(per_file), "sha256": combined}
    if len(per_file) <= LISTED_FILES:
        out["file_sha256"] = per_file
    return out


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:  # a file the format found elsewhere (a labels file named by an option)
        return str(path.resolve())
