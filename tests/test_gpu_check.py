"""The one-shot GPU check's rehearsal (benchmarks/gpu_check.py --rehearse): its commands run on CPU at
tiny sizes, so the GPU run cannot fail on a typo. The test runs the steps that exercise each kind of
plumbing (the import probe, a benchmark's table, the distillation stopped by its time budget, the
evaluation of the set it saved); `bash benchmarks/gpu_check.sh --rehearse --out DIR` runs them all."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEPS = ["setup", "bench-class-batching", "gm-distill", "gm-evaluate"]


def test_rehearsal_runs_every_step_and_writes_the_table(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--rehearse", "--out", str(out),
         "--work", str(tmp_path / "work"), "--steps", ",".join(STEPS)],
        cwd=REPO, capture_output=True, text=True, timeout=200,  # its steps' caps add up to 180 s
    )
    report = json.loads((out / "gpu_check.json").read_text())
    failed = {s["name"]: (s["status"], s["tail"]) for s in report["steps"] if not s["ok"]}
    assert done.returncode == 0 and not failed, (failed, done.stdout[-3000:], done.stderr[-3000:])
    assert [s["name"] for s in report["steps"]] == STEPS
    assert all(f"| {name} | ok" in report["table"] for name in STEPS)

    distill = next(s for s in report["steps"] if s["name"] == "gm-distill")["figures"]
    # stopped by its budget, as the GPU run will be: the set it saved is what gets evaluated
    assert distill["interrupted"] and 0 < distill["completed_iterations"] < distill["iterations"]
    evaluation = next(s for s in report["steps"] if s["name"] == "gm-evaluate")["figures"]
    assert set(evaluation["pgd20"]) == {"2/255", "4/255", "8/255"}
    assert evaluation["set_iterations"] == distill["completed_iterations"]
    assert (out / "gm-run" / "checkpoint.safetensors").is_file()
    assert (out / "gm-run" / "evaluation-results.json").is_file()
