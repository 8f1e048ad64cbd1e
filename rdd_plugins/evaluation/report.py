"""results.json, report.md and PNG plots for one or more evaluated sets."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import parse_eps
from ..storage import atomic_write_text, write_json
from ..versions import package_versions
from .pipeline import RESULTS_SCHEMA


def _cell(stat: dict) -> str:
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def markdown_table(results: list[dict]) -> str:
    eps = results[0]["evaluation"]["eps"]
    head = "| set | clean | " + " | ".join(f"{results[0]['evaluation']['attack']} {e}" for e in eps) + " |"
    rule = "|---" * (2 + len(eps)) + "|"
    rows = [
        f"| {r['label']} | {_cell(r['summary']['clean'])} | "
        + " | ".join(_cell(r["summary"]["robust"][e]) for e in eps) + " |"
        for r in results
    ]
    return "\n".join([head, rule, *rows])


def plot_robust_vs_eps(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in results:
        eps = [0.0] + [parse_eps(e) * 255 for e in r["evaluation"]["eps"]]
        stats = [r["summary"]["clean"]] + [r["summary"]["robust"][e] for e in r["evaluation"]["eps"]]
        ax.errorbar(eps, [s["mean"] for s in stats], yerr=[s["std"] for s in stats], marker="o",
                    capsize=3, label=r["label"])
    ax.set_xlabel("eps (x/255, L-inf)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{results[0]['evaluation']['attack']} robust accuracy on {results[0]['dataset']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_image_grid(images: torch.Tensor, labels: torch.Tensor, classes: list[str], path: Path,
                    title: str = "") -> None:
    """One row per class, its images side by side (at most 10 per class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_class = [images[labels == c][:10] for c in range(len(classes))]
    cols = max(1, max(len(p) for p in per_class))
    fig, axes = plt.subplots(len(classes), cols, figsize=(cols * 0.9, len(classes) * 0.9 + 0.4),
                             dpi=100, squeeze=False)
    for c, row in enumerate(axes):
        for j, ax in enumerate(row):
            ax.axis("off")
            if j < len(per_class[c]):
                img = per_class[c][j].detach().cpu().permute(1, 2, 0).numpy()
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        row[0].text(-0.1, 0.5, classes[c][:12], transform=row[0].transAxes, ha="right", va="center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.12, right=0.98, top=1 - 0.4 / fig.get_figheight(), bottom=0.02, wspace=0.05, hspace=0.05)
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
    ev = results[0]["evaluation"]
    attack_desc = f"{ev['attack']} {ev['attack_params']}".strip()
    lines = [
        f"# {title}",
        "",
        f"Dataset {results[0]['dataset']}, {ev['n_test']} test points; {ev['seeds']} fresh "
        f"`{ev['backbone']}` models per set, {ev['epochs']} epochs (DC protocol). Mean ± std (ddof 0) "
        f"in %. Robust accuracy: `{attack_desc}`, eps in [0, 1] pixel units, model in eval mode; a "
        f"point counts only if it is correct both clean and attacked.",
        "",
        markdown_table(results),
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

