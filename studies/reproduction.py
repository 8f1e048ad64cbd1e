"""The published Fashion-MNIST rows beside ours (issue 17 item 6): reads the finished jobs of the
reproduction studies' folders and prints the table of studies/fashion-mnist/reproduction.md.

    python studies/reproduction.py runs/fm-baselines runs/fm-dc runs/fm-dsa

Ours is pooled as the papers pool theirs: mean ± std (ddof 0) of clean accuracy over every
evaluation model of every set (DC and DSA: 5 sets x 20 models). A folder whose study has not
started, and jobs not finished yet, are left out.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from rdd_plugins.config import load_toml
from rdd_plugins.studies.grid import expand, load_study
from rdd_plugins.studies.jobs import evaluation_folder, finished_results
from rdd_plugins.studies.runner import STUDY_FILE

# (method, IPC) -> (mean, std): DC (Zhao et al., ICLR 2021) Table 1 for random, herding and DC;
# DSA (Zhao & Bilen, ICML 2021) for DSA; the DC/DSA rows as the reference code's readme has them.
PUBLISHED = {
    ("random", 1): (51.4, 3.8), ("random", 10): (73.8, 0.7), ("random", 50): (82.5, 0.7),
    ("herding", 1): (67.0, 1.9), ("herding", 10): (71.1, 0.7), ("herding", 50): (71.9, 0.8),
    ("dc", 1): (70.5, 0.6), ("dsa", 1): (70.6, 0.6),
}


def models_per_row(folders: list[Path]) -> dict[tuple[str, int], dict]:
    """(method, IPC) -> clean accuracies (%) of every finished evaluation model, and the set count."""
    rows: dict[tuple[str, int], dict] = {}
    for out in folders:
        if not (out / STUDY_FILE).is_file():
            continue
        for job in expand(load_study(load_toml(out / STUDY_FILE), name=out.name)):
            results = finished_results(evaluation_folder(out, job), job.config)
            if results is None:
                continue
            entry = rows.setdefault((job.method, job.ipc), {"clean": [], "sets": 0,
                                                            "distiller": job.config.distill.distiller})
            entry["sets"] += 1
            entry["clean"] += [100 * seed["clean"] for row in results for seed in row["per_seed"]]
    return rows


def table(rows: dict[tuple[str, int], dict]) -> str:
    """The published rows with ours beside them, then our variants of a published method (another
    setting of its distiller, as a test of a difference) beside that method's published row."""
    lines = ["| method | IPC | published | ours | sets × models | ours − published |", "|---|---|---|---|---|---|"]
    for (method, ipc), (mean, std) in PUBLISHED.items():
        entry = rows.get((method, ipc))
        lines.append(_line(method, ipc, f"{mean:.1f} ± {std:.1f}", mean, entry) if entry else
                     f"| {method} | {ipc} | {mean:.1f} ± {std:.1f} | not run yet | | |")
    for (method, ipc), entry in rows.items():
        # a variant's distiller, or the published method it varies (herding-nearest: herding)
        of = next((d for d in (entry["distiller"], entry["distiller"].split("-")[0]) if (d, ipc) in PUBLISHED), None)
        if (method, ipc) not in PUBLISHED and of:
            mean, std = PUBLISHED[(of, ipc)]
            lines.append(_line(method, ipc, f"{mean:.1f} ± {std:.1f} ({of})", mean, entry))
    return "\n".join(lines)


def _line(method: str, ipc: int, published: str, published_mean: float, entry: dict) -> str:
    values = entry["clean"]
    ours = sum(values) / len(values)
    spread = math.sqrt(sum((v - ours) ** 2 for v in values) / len(values))
    difference = round(ours - published_mean, 1) + 0.0  # + 0.0: -0.0 reads as +0.0
    return (f"| {method} | {ipc} | {published} | {ours:.1f} ± {spread:.1f} | "
            f"{entry['sets']} × {len(values) // entry['sets']} | {difference:+.1f} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__.strip().splitlines()[3].strip())
    print(table(models_per_row([Path(a) for a in sys.argv[1:]])))
