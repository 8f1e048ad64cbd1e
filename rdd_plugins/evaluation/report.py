"""results.json, report.md and PNG plots for one or more evaluated sets."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import parse_eps
from ..errors import RddError
from ..storage import atomic_write_text, write_json
from ..versions import package_versions
from .pipeline import RESULTS_SCHEMA, mean_timings

KNOWN_SCHEMAS = ("rdd-results/1", RESULTS_SCHEMA)


def _cell(stat: dict | None) -> str:
    return "—" if stat is None else f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def _row_name(r: dict) -> str:
    return f"{r['label']} [{r['backbone']}]"


def upgrade_result(row: dict) -> dict:
    """A schema-1 row (one attack, ``summary.robust[eps]``) in schema-2 form, so old runs compare."""
    if "attacks" in row["summary"]:
        return row
    ev = dict(row["evaluation"])
    attack, eps = ev.pop("attack"), ev.pop("eps")
    # schema 1 attacked every eps on all clean-correct points: not cascaded
    ev.update(attacks=[{"attack": attack, "params": ev.pop("attack_params", {}), "threat_model": "Linf",
                        "eps": eps}], suite="", cascade=False)
    summary = {"clean": row["summary"]["clean"],
               "attacks": {attack: {e: {"robust": row["summary"]["robust"][e], "success_rate": None}
                                    for e in eps}},
               "worst": {"Linf": dict(row["summary"]["robust"])}, "indices": None}
    return {**row, "backbone": ev["backbone"], "evaluation": ev, "summary": summary}


def load_results(path: str | Path) -> list[dict]:
    """The rows of a results.json, or of DIR/results.json, or of DIR/evaluation/results.json."""
    path = Path(path)
    candidates = [path] if path.is_file() else [path / "results.json", path / "evaluation" / "results.json"]
    for candidate in candidates:
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
                if data.get("schema") not in KNOWN_SCHEMAS:
                    raise RddError(f"{candidate} has schema {data.get('schema')!r}; this version reads "
                                   f"{', '.join(KNOWN_SCHEMAS)}")
                return [upgrade_result(r) for r in data["results"]]
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise RddError(f"{candidate} is not an rdd results.json ({type(exc).__name__}: {exc})") from None
    raise RddError(f"no results.json in {path} (looked for {', '.join(str(c) for c in candidates)})")


def _worst_columns(results: list[dict]) -> list[tuple[str, str]]:
    columns: dict = {}
    for r in results:
        for threat, per_eps in r["summary"]["worst"].items():
            for e in per_eps:
                columns[(threat, e)] = None
    return sorted(columns, key=lambda c: (c[0] != "Linf", c[0], parse_eps(c[1], c[0])))


def markdown_tables(results: list[dict]) -> str:
    """Headline table (worst case over each row's attacks) and the per-attack table."""
    cols = _worst_columns(results)
    with_indices = any(r["summary"].get("indices") for r in results)
    head = ("| set | backbone | IPC | clean | " + " | ".join(f"{t} {e}" for t, e in cols)
            + (" | I-RR | RR | CREI" if with_indices else "") + " |")
    lines = [head, "|---" * (4 + len(cols) + 3 * with_indices) + "|"]
    for r in results:
        worst = r["summary"]["worst"]
        cells = [_cell(worst.get(t, {}).get(e)) for t, e in cols]
        idx = r["summary"].get("indices") or {}
        extra = [f"{idx[k]:.1f}" if k in idx else "—" for k in ("I-RR", "RR", "CREI")] if with_indices else []
        unfinished = f" ({r['set']['unfinished']})" if r["set"].get("unfinished") else ""
        lines.append(f"| {r['label']}{unfinished} | {r['backbone']} | {r['set'].get('ipc', '?')} | "
                     f"{_cell(r['summary']['clean'])} | " + " | ".join(cells + extra) + " |")
    detail = ["| set | backbone | attack | eps | robust | success rate |", "|---|---|---|---|---|---|"]
    for r in results:
        for attack, per_eps in r["summary"]["attacks"].items():
            for e, stats in per_eps.items():
                detail.append(f"| {r['label']} | {r['backbone']} | {attack} | {e} | {_cell(stats['robust'])} | "
                              f"{_cell(stats.get('success_rate'))} |")
    return "\n".join(lines + ["", *detail])


def indices_across_ipcs(results: list[dict]) -> list[dict]:
    """BEARD's pooled indices (RRM, AEM, CREIM; ROME's I-RR likewise): per method and backbone with
    uncascaded results at two or more IPCs, one clean accuracy per IPC and every attack accuracy of
    every IPC pooled."""
    from .metrics import robustness_indices

    groups: dict = {}
    for r in results:
        if not r["summary"].get("indices"):
            continue  # cascaded or old rows carry no per-attack accuracies of their own
        key = (r["set"].get("distiller"), r["set"].get("regularizer"), r["backbone"])
        groups.setdefault(key, []).append(r)
    pooled = []
    for (distiller, regularizer, backbone), rows in groups.items():
        ipcs = sorted({r["set"].get("ipc") for r in rows}, key=str)
        if len(ipcs) < 2:
            continue
        clean = [r["summary"]["clean"]["mean"] / 100 for r in rows]
        attacked = [s["robust"]["mean"] / 100 for r in rows for per in r["summary"]["attacks"].values()
                    for s in per.values()]
        timings = [mean_timings(r["per_seed"]) for r in rows]
        clean_s = [clean for clean, _ in timings]
        attack_s = [t for _, times in timings for t in times]
        pooled.append({"distiller": distiller, "regularizer": regularizer, "backbone": backbone, "ipc": ipcs,
                       **robustness_indices(clean, attacked, clean_s, attack_s)})
    return pooled


def plot_robust_vs_eps(results: list[dict], path: Path) -> None:
    """One panel per threat model; one line per (set, backbone): accuracy under the worst case of its
    attacks against eps, with clean accuracy at eps 0 and the std over models as error bars."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    threats = list(dict.fromkeys(t for r in results for t in r["summary"]["worst"]))
    fig, axes = plt.subplots(1, len(threats), figsize=(6 * len(threats), 4.2), dpi=120, squeeze=False)
    for ax, threat in zip(axes[0], threats):
        scale = 255 if threat == "Linf" else 1
        for r in results:
            per_eps = r["summary"]["worst"].get(threat)
            if not per_eps:
                continue
            keys = sorted(per_eps, key=lambda e: parse_eps(e, threat))
            xs = [0.0] + [parse_eps(e, threat) * scale for e in keys]
            stats = [r["summary"]["clean"]] + [per_eps[e] for e in keys]
            ax.errorbar(xs, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], marker="o",
                        capsize=3, label=_row_name(r) if len({x["backbone"] for x in results}) > 1 else r["label"])
        names = sorted({a["attack"] for r in results for a in r["evaluation"]["attacks"] if a["threat_model"] == threat})
        ax.set_xlabel("eps (x/255)" if threat == "Linf" else "eps (L2 radius, [0, 1] pixels)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{threat}, worst case of {', '.join(names)}", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Robust accuracy on {results[0]['dataset']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


GRID_CELL_INCHES = 0.9  # one image
GRID_LABEL_FONTSIZE = 7
GRID_TITLE_FONTSIZE = 9
_GRID_GAP_INCHES = 0.08  # between a class label and its row, and around the figure's edges


def _text_width_inches(fig, text: str, fontsize: float) -> float:
    """Width of ``text`` as ``fig`` would draw it, measured with its renderer."""
    probe = fig.text(0, 0, text, fontsize=fontsize)
    width = probe.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi
    probe.remove()
    return width


def image_grid_figure(images: torch.Tensor, labels: torch.Tensor, classes: list[str], title: str = ""):
    """The figure of :func:`plot_image_grid`: one row per class, its images side by side (at most 10
    per class), each row labelled with its class name (at most 12 characters).

    The left margin is the longest label's measured width: a fixed fraction of the figure clipped
    the names of narrow grids (one or two images per class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_class = [images[labels == c][:10] for c in range(len(classes))]
    names = [name[:12] for name in classes]
    cols = max(1, max(len(p) for p in per_class))
    title_inches = 0.4 if title else 0.0
    fig, axes = plt.subplots(len(classes), cols, dpi=100, squeeze=False)
    label_inches = max(_text_width_inches(fig, name, GRID_LABEL_FONTSIZE) for name in names)
    left = label_inches + 2 * _GRID_GAP_INCHES
    width = max(left + cols * GRID_CELL_INCHES + _GRID_GAP_INCHES,
                _text_width_inches(fig, title, GRID_TITLE_FONTSIZE) + 2 * _GRID_GAP_INCHES if title else 0.0)
    height = len(classes) * GRID_CELL_INCHES + title_inches + 2 * _GRID_GAP_INCHES
    fig.set_size_inches(width, height)
    for c, row in enumerate(axes):
        for j, ax in enumerate(row):
            ax.axis("off")
            if j < len(per_class[c]):
                img = per_class[c][j].detach().cpu().permute(1, 2, 0).numpy()
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        # placed in points from the row's left edge, not in axes fractions, so the gap does not
        # depend on the image's size
        row[0].annotate(names[c], xy=(0, 0.5), xycoords="axes fraction", xytext=(-_GRID_GAP_INCHES * 72, 0),
                        textcoords="offset points", ha="right", va="center", fontsize=GRID_LABEL_FONTSIZE)
    if title:
        fig.suptitle(title, fontsize=GRID_TITLE_FONTSIZE)
    fig.subplots_adjust(left=left / width, right=1 - _GRID_GAP_INCHES / width,
                        top=1 - (title_inches + _GRID_GAP_INCHES) / height, bottom=_GRID_GAP_INCHES / height,
                        wspace=0.05, hspace=0.05)
    return fig


def plot_image_grid(images: torch.Tensor, labels: torch.Tensor, classes: list[str], path: Path,
                    title: str = "") -> None:
    """:func:`image_grid_figure` saved as ``path``."""
    import matplotlib.pyplot as plt

    fig = image_grid_figure(images, labels, classes, title)
    fig.savefig(path)
    plt.close(fig)


def write_report(out: str | Path, results: list[dict], config: dict, *, title: str = "Evaluation",
                 grids: dict[str, Path] | None = None, extra_md: str = "", extra_json: dict | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {
        "schema": RESULTS_SCHEMA,
        "results": results,
        "config": config,
        "versions": package_versions(),
        **(extra_json or {}),
    })
    plot_robust_vs_eps(results, out / "robust_vs_eps.png")
    plans = "; ".join(dict.fromkeys(
        ", ".join(f"`{a['attack']}`" + (f" {a['params']}" if a.get("params") else "") for a in r["evaluation"]["attacks"])
        + (f" (suite `{r['evaluation']['suite']}`)" if r["evaluation"].get("suite") else "")
        + (", cascaded" if r["evaluation"].get("cascade") else ", each on all points")
        for r in results))

    def setting(key: str) -> str:  # one value, or every value when the compared rows differ
        values = list(dict.fromkeys(str(r["evaluation"][key]) for r in results))
        return values[0] if len(values) == 1 else f"{' / '.join(values)} (rows differ)"

    lines = [
        f"# {title}",
        "",
        f"Dataset {results[0]['dataset']}, {setting('n_test')} test points (the first ones, in order); "
        f"{setting('seeds')} model(s) per set and backbone, each trained from scratch for {setting('epochs')} "
        f"epochs (DC protocol). "
        f"Mean ± std (ddof 0) in %. Attacks: {plans}. eps in [0, 1] pixel units (Linf) or as an L2 "
        f"radius in the same units, model in eval mode; a point counts as robust only if it is correct "
        f"both clean and attacked. The headline columns are the worst case at that eps: correct under "
        f"every attack at that eps and at every smaller eps of the row's grid (a break inside a small "
        f"ball is one inside every larger ball). An attack's success rate is the share of the points "
        f"it ran on that it broke."
        + (" Cascaded rows: each attack ran only on the points that the attacks before it and the "
           "smaller eps left, so its robust accuracy below is cumulative in both."
           if any(r["evaluation"].get("cascade") for r in results) else "")
        + (" I-RR (ROME), RR and CREI (BEARD) pool every attack and eps of a row that was not cascaded "
           "(CREI includes attack wall-clock times, so it depends on the machine); definitions in "
           "`rdd_plugins/evaluation/metrics.py`." if any(r["summary"].get("indices") for r in results) else ""),
        "",
        *[f"**Warning: {r['label']} was evaluated on an unfinished set ({r['set']['unfinished']}).**\n"
          for r in results if r.get("set", {}).get("unfinished")],
        markdown_tables(results),
        "",
        "![robust accuracy vs eps](robust_vs_eps.png)",
        "",
    ]
    for label, path in (grids or {}).items():
        lines += [f"### {label}", "", f"![{label}]({Path(path).name})", ""]
    if extra_md:
        lines += [extra_md, ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return out
