"""Copy what a study folder says, not what it made, into the repository: the leaderboard (markdown,
JSON, PNGs), the study file, and per job its config.toml, meta.json, history.json and each
evaluation's config.toml, results.json and report.md. Sets, checkpoints and cached seeds stay where they are (the study file is committed
beside them already).

    python studies/export.py runs/fm-study studies/fashion-mnist
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

# config.toml (the study's study.toml, each job's and each evaluation's) lets the study code read
# the exported folder as it reads the study's own: `python studies/reproduction.py` runs on either.
KEPT = {"leaderboard.md", "leaderboard.json", "study.toml", "config.toml", "meta.json", "history.json",
        "results.json", "report.md"}


def export(out: Path, dest: Path) -> int:
    copied = 0
    for path in sorted(out.rglob("*")):
        if not path.is_file() or "seeds" in path.relative_to(out).parts:
            continue
        if path.name in KEPT or (path.suffix == ".png" and path.parent == out):
            target = dest / path.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied += 1
    return copied


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    print(f"copied {export(Path(sys.argv[1]), Path(sys.argv[2]))} files")
