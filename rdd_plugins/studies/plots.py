"""The leaderboard's PNGs, one set per dataset: robust accuracy vs eps per method, vs IPC (when the
grid has several) and vs distillation seconds, those two at Linf 8/255 (or the largest eps every
table has)."""

from __future__ import annotations

import re
from pathlib import Path

from ..config import parse_eps
from ..storage import atomic_write


MIN_SECONDS = 1e-3  # a log axis needs positive times; a one-shot selection may round to 0
# a method keeps one look in every panel and plot; past 10 methods (a study has 13) the colours
# come round again with the next marker, so no two methods look alike
COLOURS = [f"C{i}" for i in range(10)]
MARKERS = ["o", "s", "^", "D", "v"]


def method_styles(methods: list[str]) -> dict[str, dict]:
    """Per method, in the order given, the colour and marker it is drawn with everywhere."""
    return {m: {"color": COLOURS[i % len(COLOURS)], "marker": MARKERS[i // len(COLOURS) % len(MARKERS)]}
            for i, m in enumerate(methods)}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt


def _save_and_close(plt, fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _finish_panel(ax, legend_outside: bool = False) -> None:
    """The style every panel shares: a light grid and a small legend (outside, right, where the
    points fill the panel)."""
    ax.grid(alpha=0.3)
    if legend_outside:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        ax.legend(fontsize=8)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def _x(threat: str, eps: str) -> float:
    return parse_eps(eps, threat) * (255 if threat == "Linf" else 1)


def _eps_label(threat: str) -> str:
    return "Linf eps (x/255)" if threat == "Linf" else f"{threat} eps"


def robust_vs_eps(plt, groups: list[dict], path: Path, styles: dict[str, dict]) -> None:
    """A panel per (IPC, backbone); a line per method: clean at eps 0, then the worst case."""
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), dpi=110, squeeze=False)
    for ax, group in zip(axes[0], groups):
        threat = group["columns"][0][0]
        cols = [e for t, e in group["columns"] if t == threat]
        for m in group["methods"]:
            points = [(0.0, m["clean"])] + [(_x(threat, e), m["worst"][f"{threat} {e}"]) for e in cols
                                            if f"{threat} {e}" in m["worst"]]
            ax.errorbar([x for x, _ in points], [s["mean"] for _, s in points], yerr=[s["std"] for _, s in points],
                        capsize=3, label=m["method"], **styles[m["method"]])
        ax.set(xlabel=_eps_label(threat), ylabel="accuracy (%)", title=f"IPC {group['ipc']}, {group['backbone']}")
        ax.set_ylim(bottom=0)
        _finish_panel(ax)
    fig.suptitle(f"{groups[0]['dataset']}: worst-case robust accuracy (mean ± std over seeds)", fontsize=10)
    _save_and_close(plt, fig, path)


# RobustBench's Linf radius for CIFAR, the one the field's robust-accuracy tables quote: the vs-IPC
# and vs-seconds plots use it when every group has it, else the largest eps they have in common
REFERENCE_EPS = ("Linf", "8/255")


def _plotted_eps(groups: list[dict]) -> tuple[str, str] | None:
    if all(list(REFERENCE_EPS) in g["columns"] for g in groups):
        return REFERENCE_EPS
    return _common_eps(groups)


def _common_eps(groups: list[dict]) -> tuple[str, str] | None:
    """The largest eps that every group has in common (the first threat model's)."""
    found = [tuple(g["largest_common_eps"]) for g in groups if g["largest_common_eps"]]
    if len(found) != len(groups) or len({t for t, _ in found}) != 1:
        return None
    threat = found[0][0]
    ceiling = min(parse_eps(e, threat) for _, e in found)
    shared = set.intersection(*({e for t, e in g["columns"] if t == threat} for g in groups))
    shared = [e for e in shared if parse_eps(e, threat) <= ceiling]
    return (threat, max(shared, key=lambda e: parse_eps(e, threat))) if shared else None


def robust_vs_ipc(plt, groups: list[dict], path: Path, styles: dict[str, dict]) -> bool:
    """Per backbone, robust accuracy at 8/255 (or the largest common eps) against IPC; False when not drawn."""
    backbones = list(dict.fromkeys(g["backbone"] for g in groups))
    common = _plotted_eps(groups)
    if common is None or len({g["ipc"] for g in groups}) < 2:
        return False
    column = " ".join(common)
    fig, axes = plt.subplots(1, len(backbones), figsize=(5 * len(backbones), 4), dpi=110, squeeze=False)
    for ax, backbone in zip(axes[0], backbones):
        mine = sorted((g for g in groups if g["backbone"] == backbone), key=lambda g: g["ipc"])
        methods = list(dict.fromkeys(m["method"] for g in mine for m in g["methods"]))
        for method in methods:
            points = [(g["ipc"], m["worst"][column]) for g in mine for m in g["methods"]
                      if m["method"] == method and column in m["worst"]]
            ax.errorbar([x for x, _ in points], [s["mean"] for _, s in points], yerr=[s["std"] for _, s in points],
                        capsize=3, label=method, **styles[method])
        ax.set(xlabel="images per class", ylabel=f"robust accuracy at {column} (%)",
               title=f"{mine[0]['dataset']}, {backbone}")
        ax.set_xscale("log")
        _finish_panel(ax)
    _save_and_close(plt, fig, path)
    return True


def robust_vs_seconds(plt, groups: list[dict], path: Path, styles: dict[str, dict]) -> bool:
    """Robust accuracy at 8/255 (or the largest common eps) against distillation seconds, a point per
    (method, IPC, backbone); False when not drawn."""
    common = _plotted_eps(groups)
    if common is None:
        return False
    column = " ".join(common)
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    backbones_of: dict[str, set[str]] = {}  # per method, in the order the tables list them
    for g in groups:
        for m in g["methods"]:
            backbones_of.setdefault(m["method"], set()).add(g["backbone"])
    # a method evaluated on several backbones has a point per backbone at the same seconds
    several_backbones = any(len(backbones) > 1 for backbones in backbones_of.values())
    for method in backbones_of:
        points = [(g, m) for g in groups for m in g["methods"]
                  if m["method"] == method and m["distill_seconds"] and column in m["worst"]]
        if not points:
            continue
        seconds = [max(m["distill_seconds"]["mean"], MIN_SECONDS) for _, m in points]
        ax.errorbar(seconds, [m["worst"][column]["mean"] for _, m in points],
                    yerr=[m["worst"][column]["std"] for _, m in points], linestyle="none", capsize=3,
                    label=method, **styles[method])
        for (g, m), x in zip(points, seconds):
            where = f", {g['backbone']}" if several_backbones else ""
            ax.annotate(f"ipc {g['ipc']}{where}", (x, m["worst"][column]["mean"]), fontsize=7)
    ax.set_xscale("log")  # selecting a subset and distilling differ by orders of magnitude
    ax.set(xlabel="distillation (s)", ylabel=f"robust accuracy at {column} (%)",
           title=f"{groups[0]['dataset']}: robustness for the time spent")
    _finish_panel(ax, legend_outside=True)
    _save_and_close(plt, fig, path)
    return True


def write_plots(out: Path, board: dict) -> list[str]:
    """The PNGs of every dataset in ``board``; their file names."""
    # the main evaluation's groups: a further one (AutoAttack on some IPCs) has its own tables only
    main = [g for g in board["groups"] if not g.get("evaluation")]
    if not main:
        return []
    plt = _pyplot()
    written = []
    # the study's order of methods, not the finished ones': a method's look does not change as jobs finish
    listed = board.get("methods") or []
    styles = method_styles(list(dict.fromkeys([*listed, *(m["method"] for g in main for m in g["methods"])])))
    for dataset in dict.fromkeys(g["dataset"] for g in main):
        groups = [g for g in main if g["dataset"] == dataset]
        stem = f"{_slug(dataset)}_"
        robust_vs_eps(plt, groups, out / f"{stem}robust_vs_eps.png", styles)
        written.append(f"{stem}robust_vs_eps.png")
        if robust_vs_ipc(plt, groups, out / f"{stem}robust_vs_ipc.png", styles):
            written.append(f"{stem}robust_vs_ipc.png")
        if robust_vs_seconds(plt, groups, out / f"{stem}robust_vs_seconds.png", styles):
            written.append(f"{stem}robust_vs_seconds.png")
    return written
