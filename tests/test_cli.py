"""The ``rdd`` command as a user runs it: a real subprocess, exit codes, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rdd_plugins

RDD = [str(Path(sys.executable).parent / "rdd")]
TINY = ["--set", 'data.params={num_classes = 3, image_size = 8, per_class = 12}',
        "--set", "backbone.params={width = 4, depth = 2}",
        "--set", "distill.params={batch_real = 8, outer_loop = 2, inner_loop = 1}",
        "--device", "cpu", "--no-progress"]
TINY_EVAL = ["--set", "evaluate.epochs=5", "--set", "evaluate.attack_params={steps = 2}"]


def rdd(*args, check=True, env=None):
    env = {**os.environ, "RDD_NO_PROGRESS": "1", **(env or {})}
    proc = subprocess.run([*RDD, *args], capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"rdd {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_plugins_json_lists_every_kind():
    out = json.loads(rdd("plugins", "--json").stdout)
    for kind, name in [("datasets", "fashion-mnist"), ("datasets", "synthetic"), ("backbones", "convnet"),
                       ("distillers", "gm"), ("regularizers", "curvature"), ("attacks", "pgd")]:
        assert name in [e["name"] for e in out[kind]], (kind, name)
    entry = next(e for e in out["regularizers"] if e["name"] == "curvature")
    assert set(entry) == {"name", "plugin", "description"} and entry["description"]
    assert out["failed_plugins"] == []


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    # `rdd plugins | head -1`: the pipe's read end is closed before rdd's first write.
    env = {**os.environ, "RDD_NO_PROGRESS": "1"}
    proc = subprocess.Popen([*RDD, "plugins"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 141, err
    assert err == ""


def test_a_broken_pipe_that_is_not_stdout_is_an_error(monkeypatch, capsys):
    from rdd_plugins import cli

    def worker_gone(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setitem(cli.COMMANDS, "plugins", worker_gone)
    assert cli.main(["plugins"]) == 1
    assert capsys.readouterr().err.startswith("rdd: error: BrokenPipeError: [Errno 32] Broken pipe")


def test_distill_then_evaluate_on_synthetic(tmp_path):
    out = tmp_path / "run"
    rdd("distill", "--dataset", "synthetic", "--ipc", "2", "--distiller", "gm", "--regularizer", "curvature",
        "--backbone", "convnet", "--iterations", "2", "--seed", "3", "--out", str(out), *TINY,
        env={"OMP_NUM_THREADS": "1"})
    assert {"images.safetensors", "meta.json", "config.toml", "history.json"} <= {p.name for p in out.iterdir()}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["regularizer"] == "curvature" and meta["seed"] == 3 and meta["config"]["distill"]["ipc"] == 2
    assert meta["cpu_threads"] == 1  # what its seconds were measured with
    assert "torch" in meta["versions"]

    proc = rdd("evaluate", str(out), "--attack", "fgsm", "--eps", "2/255", "0.1", "--seeds", "2",
               "--out", str(tmp_path / "eval"), "--set", "evaluate.epochs=5", "--no-progress")
    assert "clean" in proc.stdout
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    (r,) = results["results"]
    assert [(a["attack"], a["eps"]) for a in r["evaluation"]["attacks"]] == [("fgsm", ["2/255", "0.1"])]
    assert len(r["per_seed"]) == 2 and results["config"]["seed"] == 3


def test_evaluate_with_suites_then_compare(tmp_path):
    out = tmp_path / "run"
    rdd("distill", "--dataset", "synthetic", "--ipc", "2", "--iterations", "1", "--out", str(out), *TINY)
    common = ["--seeds", "1", "--n-test", "30", "--set", "evaluate.epochs=5", "--no-progress"]
    rdd("evaluate", str(out), "--suite", "quick", "--eps", "4/255", "16/255", "--out", str(tmp_path / "quick"), *common)
    rdd("evaluate", str(out), "--suite", "dd-robustbench", "--attack", "pgd-l2", "--eps-l2", "0.25",
        "--out", str(tmp_path / "ddrb"), *common)
    quick = json.loads((tmp_path / "quick" / "results.json").read_text())["results"][0]
    assert [a["attack"] for a in quick["evaluation"]["attacks"]] == ["fgsm", "pgd"] and quick["evaluation"]["cascade"]
    assert list(quick["summary"]["worst"]["Linf"]) == ["4/255", "16/255"]
    ddrb = json.loads((tmp_path / "ddrb" / "results.json").read_text())["results"][0]
    assert [a["attack"] for a in ddrb["evaluation"]["attacks"]] == ["fgsm", "pgd", "mifgsm", "jitter", "pgd-l2"]
    assert list(ddrb["summary"]["worst"]["Linf"]) == ["1/255", "2/255", "3/255", "4/255", "8/255"]
    assert list(ddrb["summary"]["worst"]["L2"]) == ["0.25"] and ddrb["evaluation"]["cascade"] is False
    for name in ("quick", "ddrb"):
        assert {"results.json", "report.md", "robust_vs_eps.png", "distilled_images.png", "config.toml"} <= \
            {p.name for p in (tmp_path / name).iterdir()}
    proc = rdd("compare", str(tmp_path / "quick"), str(tmp_path / "ddrb"), "--out", str(tmp_path / "cmp"))
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "gm+none (quick)" in report and "gm+none (ddrb)" in report and "Linf 16/255" in report
    assert "gm+none (ddrb) [convnet]" in proc.stdout


def test_config_file_with_cli_override(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[distill]\nipc = 3\niterations = 1\nregularizer = "curvature"\n'
                   '[distill.regularizer_params]\nh = 0.5\nlam = 2.0\n')
    rdd("distill", "--config", str(cfg), "--dataset", "synthetic", "--ipc", "1", "--out", str(tmp_path / "r"), *TINY)
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["ipc"] == 1  # the flag wins over the file
    assert meta["config"]["distill"]["regularizer_params"] == {"h": 0.5, "lam": 2.0}
    written = (tmp_path / "r" / "config.toml").read_text()
    assert "ipc = 1" in written and 'regularizer = "curvature"' in written


def test_quickstart_runs_end_to_end_on_synthetic(tmp_path):
    out = tmp_path / "qs"
    proc = rdd("quickstart", "--out", str(out), "--set", 'data.dataset="synthetic"', "--set", "distill.iterations=1",
               "--set", "distill.ipc=2", "--set", "evaluate.n_test=30", "--set", 'evaluate.eps=["4/255"]',
               *TINY, *TINY_EVAL)
    report = (out / "report.md").read_text()
    labels = ["random", "gm", "gm+curvature", "sre2l", "sre2l+curvature"]
    for label in labels:
        assert f"| {label} |" in report
        assert (out / f"images_{label.replace('+', '_')}.png").stat().st_size > 1000
    assert (out / "robust_vs_eps.png").exists()
    results = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in results["results"]] == labels
    # SRe2L's teacher gets BatchNorm although the user's backbone table did not ask for it
    meta = json.loads((out / "sets" / "sre2l_curvature" / "meta.json").read_text())
    assert meta["config"]["backbone"]["params"] == {"width": 4, "depth": 2, "norm": "batch"}
    assert meta["config"]["distill"]["regularizer"] == "curvature"
    assert "gm+curvature" in proc.stdout
    # A second run reuses the finished sets instead of distilling again.
    rdd("quickstart", "--out", str(out), "--set", 'data.dataset="synthetic"', "--set", "distill.iterations=1",
        "--set", "distill.ipc=2", "--set", "evaluate.n_test=30", "--set", 'evaluate.eps=["4/255"]', *TINY, *TINY_EVAL)
    timings = json.loads((out / "results.json").read_text())["timings"]
    assert all(t["reused_distilled_set"] for t in timings.values())


@pytest.mark.parametrize("args, message", [
    (["distill", "--dataset", "synthetic", "--distiller", "gmm", "--out", "X"], "unknown distiller 'gmm'; known: dm, dsa, gm, herding, random, sre2l"),
    (["distill", "--dataset", "synthetic", "--regularizer", "cure2", "--out", "X"], "unknown regularizer 'cure2'"),
    (["distill", "--dataset", "synthetic", "--ipc", "0", "--out", "X"], "--ipc: must be at least 1, got 0"),
    (["distill", "--dataset", "synthetic", "--iterations", "0", "--out", "X"], "--iterations: must be at least 1"),
    (["distill", "--dataset", "fashion-mnist", "--data-root", "NOPE", "--out", "X"], "NOPE does not exist"),
    (["distill", "--dataset", "synthetic", "--backbone", "timm:no_such_net", "--out", "X"], "no_such_net"),
    (["distill", "--dataset", "synthetic", "--set", "distill.params.lr_img=abc", "--out", "X"],
     "parameter lr_img must be a number"),
    (["distill", "--dataset", "synthetic", "--set", "backbone.params.width=\"16\"", "--out", "X"],
     "parameter width must be an integer"),
    (["distill", "--resume", "GOOD", "--ipc", "3"], "drop --ipc"),
    (["evaluate", "GOOD", "--epochs", "0"], "--epochs: must be at least 1"),
    (["evaluate", "GOOD", "--eps", "2/0"], "divides by zero"),
    (["evaluate", "GOOD", "--eps", "-1/255"], "negative"),
    (["evaluate", "FILE"], "is a file, not a distilled-set folder"),
    (["evaluate", "GOOD", "--out", "READONLY/out"], "not writable"),
    (["distill", "--dataset", "cifar10", "--data-root", "EMPTY", "--out", "X"], "cifar10 not found"),
    (["distill", "--dataset", "synthetic", "--set", "distill.ipcs=3", "--out", "X"], "unknown config key distill.'ipcs'"),
    (["distill", "--config", "missing.toml", "--out", "X"], "config file missing.toml does not exist"),
    (["evaluate", "NOPE"], "does not exist"),
    (["evaluate", "BADRANGE"], "must lie in [0, 1]"),
    (["evaluate", "GOOD", "--eps", "8"], "eps '8' is outside [0, 1]"),
    (["evaluate", "GOOD", "--attack", "pgdd"], "unknown attack 'pgdd'"),
    (["evaluate", "GOOD"], "does not fit the test data"),
    (["evaluate", "GOOD", "--n-test", "-3"], "--n-test: must be at least 0"),
    (["evaluate", "GOOD", "--eps", "abc"], "eps 'abc' is not a number"),
    (["evaluate", "GOOD", "--suite", "quik"], "unknown attack suite 'quik'; known: autoattack, dd-robustbench"),
    (["evaluate", "GOOD", "--eps-l2", "100"], "L2 eps '100' is outside [0, 64]"),
    (["evaluate", "GOOD", "--attack", "fgsm,pgd", "--set", "evaluate.attack_params.steps=3"], "own table"),
    (["compare", "NOPE"], "no results.json"),
    (["benchmark", "GOOD", "--dataset", "cifar10"], "cannot be benchmarked on 'cifar10'"),
    (["distill", "--dataset", "synthetic", "--set", 'distill.ipc="ten"', "--out", "X"], "distill.ipc must be an integer"),
    (["distill", "--dataset", "synthetic", "--set", "distill.params.lr_imgg=1", "--out", "X"], "lr_imgg"),
    (["distill", "--dataset", "synthetic", "--set", "seed=1", "--set", "seed.x=1", "--out", "X"], "is a value"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    import torch
    from safetensors.torch import save_file

    from rdd_plugins.storage import save_distilled

    meta = {"dataset": {"name": "synthetic", "classes": ["a", "b"], "channels": 1, "image_size": [4, 4],
                        "mean": [0.5], "std": [0.25]}, "ipc": 1}
    save_distilled(tmp_path / "GOOD", torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), meta)
    save_distilled(tmp_path / "BADRANGE", torch.rand(2, 1, 4, 4), torch.tensor([0, 1]), meta)
    save_file({"images": torch.rand(2, 1, 4, 4) + 1, "labels": torch.tensor([0, 1])},
              tmp_path / "BADRANGE" / "images.safetensors")
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "FILE").write_text("not a set")
    # /proc takes no files, even from root (a 0500 folder would not stop root, as CI runs)
    args = [str(tmp_path / a) if a in ("NOPE", "BADRANGE", "GOOD", "EMPTY", "X", "FILE") else
            "/proc/rdd-test-out" if a == "READONLY/out" else a for a in args]
    proc = rdd(*args, check=False, )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("rdd: error: ") and message in lines[0], lines[0]
    assert not (tmp_path / "X").exists(), "bad input must fail before anything is written"


def test_benchmark_runs_autoattack_on_the_first_points_and_writes_model_info(tmp_path):
    out = tmp_path / "run"
    four_classes = ["--set", "data.params={num_classes = 4, image_size = 8, per_class = 12}"]
    rdd("distill", "--dataset", "synthetic", "--ipc", "2", "--iterations", "1", "--out", str(out), *TINY, *four_classes)
    proc = rdd("benchmark", str(out), "--n-examples", "8", "--eps", "4/255", "--set", "evaluate.epochs=5",
               "--out", str(tmp_path / "bench"), "--no-progress")
    bench = json.loads((tmp_path / "bench" / "benchmark.json").read_text())
    result = bench["result"]
    assert result["n_examples"] == 8 and result["dataset"] == "synthetic" and result["threat_model"] == "Linf"
    assert 0 <= result["autoattack_acc"] <= result["clean_acc"] <= 1
    (info_path,) = (tmp_path / "bench" / "model_info").iterdir()
    info = json.loads(info_path.read_text())
    assert info["eps"] == "4/255" and info["clean_acc"] == f"{100 * result['clean_acc']:.2f}"
    assert info["architecture"] == "convnet" and "AutoAttack" in proc.stdout


class _SigtermReachedTheProcess(Exception):
    pass


def test_sigterm_outside_a_distillation_unwinds_and_says_so(monkeypatch, capsys):
    # A scheduler's SIGTERM during an evaluation: the command unwinds (files being written are
    # cleaned up, finished parts stay) and says so, instead of ending where it stands.
    import signal
    import time

    from rdd_plugins import cli

    def terminated_mid_command(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler interrupts this
        return 0

    def as_without_rdd(signum, frame):  # what SIGTERM would do here if rdd installed no handler
        raise _SigtermReachedTheProcess

    previous = signal.signal(signal.SIGTERM, as_without_rdd)
    try:
        monkeypatch.setitem(cli.COMMANDS, "plugins", terminated_mid_command)
        assert cli.main(["plugins"]) == 128 + signal.SIGTERM
        assert capsys.readouterr().err.strip() == "rdd: terminated; finished parts were kept"
        assert signal.getsignal(signal.SIGTERM) is as_without_rdd  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)


class _SigtermAfterFirstStep:
    @rdd_plugins.hookimpl
    def rdd_distill_step(self, step):
        import signal

        if step.iteration == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler's, mid-run


def test_sigterm_during_a_distillation_checkpoints_and_exits_as_terminated(tmp_path, capsys):
    import signal

    from rdd_plugins import cli, plugins

    out = tmp_path / "run"
    plugins.register_plugin(_SigtermAfterFirstStep(), "sigterm-after-first-step")
    try:
        code = cli.main(["distill", "--dataset", "synthetic", "--ipc", "2", "--iterations", "6", "--out", str(out),
                         "--set", "distill.checkpoint_every=0", *TINY])
    finally:
        plugins.unregister_plugin("sigterm-after-first-step")
    assert code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().endswith("rdd: terminated; finished parts were kept")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["interrupted"] and meta["completed_iterations"] == 1 and (out / "checkpoint.safetensors").is_file()
