"""leaderboard.md: the leaderboard dict (leaderboard.py) as tables a person reads."""

from __future__ import annotations


def spread_cell(stat: dict | None) -> str:
    return "—" if stat is None else f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def _difference(stat: dict | None) -> str:
    if stat is None:
        return "—"
    se = "n/a" if stat["se"] is None else f"{stat['se']:.2f}"
    mean = round(stat["mean"], 2) + 0.0  # + 0.0: a difference that rounds to zero reads +0.00, not -0.00
    return f"{mean:+.2f} ± {se} ({stat['ahead']}/{stat['n']} ahead)"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|---" * len(head) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def _group(group: dict) -> list[str]:
    names = [f"{t} {e}" for t, e in group["columns"]]
    evaluation = f" — evaluation `{group['evaluation']}`" if group.get("evaluation") else ""
    lines = [f"## {group['dataset']}, IPC {group['ipc']}, evaluated on {group['backbone']}{evaluation}", ""]
    lines += _table(["method", "seeds", "clean", *names, "distill (s)", "flagged jobs"],
                    [[m["method"], str(len(m["seeds"])), spread_cell(m["clean"]),
                      *(spread_cell(m["worst"].get(n)) for n in names), spread_cell(m["distill_seconds"]),
                      f"{m['flagged_jobs']}/{len(m['seeds'])}"] for m in group["methods"]])
    for key, title, keys in (("paired", "Paired against `{}` (same seed: method − baseline)", ["clean", *names]),
                             ("over_random", "Robust improvement over random (`{}`, same IPC, seed and attacks)",
                              names)):
        section = group.get(key)
        if not section or not section["methods"]:
            continue
        reference = section.get("baseline") or section.get("random")
        lines += ["", title.format(reference) + ": mean ± standard error over seeds, seeds ahead.", ""]
        lines += _table(["method", *keys],
                        [[m["method"], *(_difference(m["differences"].get(k)) for k in keys)]
                         for m in section["methods"]])
    return lines + [""]


def _flags(board: dict) -> list[str]:
    if not board["flags"]:
        return ["## Protocol checks", "", "No evaluated row trips a check.", ""]
    lines = ["## Protocol checks", "",
             "Rows that trip a gradient-masking or protocol check (rdd_plugins/studies/checks.py); "
             "look at them before trusting their numbers.", ""]
    for f in board["flags"]:
        where = f"{f['backbone']}, {f['evaluation']}" if f.get("evaluation") else f["backbone"]
        lines += [f"- {f['dataset']} IPC {f['ipc']} {f['method']} seed {f['seed']} [{where}]: {flag}"
                  for flag in f["flags"]]
    return lines + [""]


def leaderboard_markdown(board: dict, plots: list[str]) -> str:
    jobs = board["jobs"]
    lines = [
        f"# Study {board['study']}: leaderboard", "",
        f"{jobs['finished']} of {jobs['total']} jobs finished; this file is rewritten after every "
        f"finished job. Per dataset, IPC and evaluation backbone (with its parameters: no difference is "
        f"taken across backbones, and each table is paired against the first of the study's baselines it "
        f"has): mean ± std (ddof 0) over run seeds of "
        f"each job's clean and worst-case robust accuracy in % (a job's number is the mean over its "
        f"evaluation models), and the distillation time in seconds (the set's meta.json; a resumed run "
        f"counts every leg up to its checkpoints). A worst-case column counts points correct under every attack at "
        f"that eps and every smaller one.", "",
    ]
    threads = board.get("cpu_threads") or {}
    if len(threads) > 1:  # one count is the normal case; several mean the numbers mix roundings
        made = ", ".join(f"{n} with {count} thread{'' if count == '1' else 's'}" if count.isdigit()
                         else f"{n} with an {count} count"
                         for count, n in threads.items())
        known = [count for count in threads if count.isdigit()]
        what = "different thread counts" if len(known) > 1 else "thread counts not all recorded"
        lines += [f"CPU sets made with {what} ({made}): on a CPU a set rounds "
                  f"differently with another count, so same-config jobs agree bit for bit only within one, "
                  f"and their seconds compare only within one.", ""]
    if not board["groups"]:
        lines += ["No job has finished yet.", ""]
    for group in board["groups"]:
        lines += _group(group)
    lines += _flags(board)
    lines += [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"
