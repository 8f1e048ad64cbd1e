"""``rdd compare``: several evaluations merged into one table, one plot and one report."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import RddError
from ..run.folder import check_writable


def compare_results(runs: list[str | Path], out: str | Path | None = None, title: str = "Comparison") -> list[dict]:
    """The rows of every run's results.json, labels made unique, one dataset; a report in ``out``."""
    from .report import indices_across_ipcs, load_results, write_report

    if not runs:
        raise RddError("compare needs at least one run folder or results.json")
    if out is not None:
        check_writable(out, "compare folder")
    rows = unique_labels([(_run_name(run), row) for run in runs for row in load_results(run)])
    datasets = {r["dataset"] for r in rows}
    if len(datasets) > 1:
        raise RddError(f"the runs evaluate different datasets ({', '.join(sorted(datasets))}); compare one at a time")
    for row in rows:
        note = row.get("set", {}).get("unfinished")
        if note:
            print(f"rdd: warning: {row['label']}: its set is unfinished ({note})", file=sys.stderr)
    if out is not None:
        pooled = indices_across_ipcs(rows)
        write_report(out, rows, {"compared": [str(r) for r in runs]}, title=title, extra_md=_pooled_table(pooled),
                     extra_json={"across_ipcs": pooled})
    return rows


def unique_labels(pairs: list[tuple[str, dict]]) -> list[dict]:
    """A (label, backbone) seen in several runs gets its run's name added, and a count if needed."""
    counts: dict = {}
    for _, row in pairs:
        counts[(row["label"], row["backbone"])] = counts.get((row["label"], row["backbone"]), 0) + 1
    rows, seen = [], set()
    for run, row in pairs:
        if counts[(row["label"], row["backbone"])] > 1:
            label, k = f"{row['label']} ({run})", 2
            while (label, row["backbone"]) in seen:
                label, k = f"{row['label']} ({run} #{k})", k + 1
            row = {**row, "label": label}
        seen.add((row["label"], row["backbone"]))
        rows.append(row)
    return rows


def _pooled_table(pooled: list[dict]) -> str:
    if not pooled:
        return ""
    return "\n".join(["## Across IPCs (BEARD's pooled RRM / AEM / CREIM, ROME's I-RR)", "",
                      "| set | backbone | IPCs | I-RR | RR | AE | CREI |", "|---|---|---|---|---|---|---|"]
                     + [f"| {p['distiller']}+{p['regularizer']} | {p['backbone']} | "
                        f"{', '.join(map(str, p['ipc']))} | {p['I-RR']:.1f} | {p['RR']:.1f} | "
                        f"{p['AE']:.1f} | {p['CREI']:.1f} |" for p in pooled])


def _run_name(run: str | Path) -> str:
    """A run's name for labels: its folder, skipping the generic results.json / evaluation parts."""
    path = Path(run)
    if path.suffix == ".json":
        path = path.parent if path.name == "results.json" else path.with_suffix("")
    if path.name == "evaluation":
        path = path.parent
    return path.name or str(run)
