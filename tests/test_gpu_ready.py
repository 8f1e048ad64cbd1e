"""Issue #18 on a CPU: deterministic mode and TF32 per path, timers that wait for the device, and
checkpoints that resume on another machine. What only a GPU can show is left to a GPU run."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import rdd_plugins
from rdd_plugins import checkpoint
from rdd_plugins.checkpoint import CHECKPOINT_FILE, load_checkpoint, restore_rng, run_fingerprint
from rdd_plugins.cli import main
from rdd_plugins.config import config_from_dict, resolve, to_toml
from rdd_plugins.distillation import loop
from rdd_plugins.errors import RddError
from rdd_plugins.evaluation import pipeline
from rdd_plugins.evaluation.metrics import without_timings
from rdd_plugins.runtime import Numerics

DETERMINISTIC_FP32 = {"deterministic": True, "tf32": False}
FAST = {"deterministic": False, "tf32": True}


@pytest.fixture(autouse=True)
def numerics(monkeypatch):
    """Every run puts torch's numerics back; the test checks that, and this undoes any slip."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = Numerics.current()
    yield before
    before.restore()


class FakeClock:
    """A device clock that ticks one second per reading and notes the numerics it was read under."""

    def __init__(self):
        self.readings = []

    def __call__(self, device: torch.device) -> float:
        self.readings.append((device.type, Numerics.current()))
        return float(len(self.readings))


def without_runtime(meta: dict) -> dict:
    """A set's meta less what legitimately differs between two runs of one config."""
    config = {k: v for k, v in meta["config"].items() if k not in ("deterministic", "tf32")}
    return {**{k: v for k, v in meta.items() if k not in ("runtime", "seconds", "config")}, "config": config}


@pytest.mark.parametrize("distiller, regularizer", [("gm", "curvature"), ("dsa", "none")])
def test_deterministic_mode_changes_no_number_on_cpu(make_config, tmp_path, distiller, regularizer):
    runs = {}
    for deterministic in (True, False):
        cfg = {**make_config(distiller=distiller, regularizer=regularizer), "deterministic": deterministic}
        rdd_plugins.distill(cfg, out=tmp_path / str(deterministic), progress=False)
        runs[deterministic] = rdd_plugins.load_distilled(tmp_path / str(deterministic))
    on, off = runs[True], runs[False]
    assert torch.equal(on.images, off.images) and torch.equal(on.labels, off.labels)
    losses = [json.loads((tmp_path / name / "history.json").read_text())["history"] for name in ("True", "False")]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in losses[0]] == \
           [{k: v for k, v in h.items() if k != "seconds"} for h in losses[1]]
    assert on.meta["runtime"] == DETERMINISTIC_FP32 and off.meta["runtime"] == {"deterministic": False, "tf32": False}
    assert without_runtime(on.meta) == without_runtime(off.meta)


def test_distillation_runs_deterministic_in_fp32_times_each_step_and_puts_the_numerics_back(
        make_config, monkeypatch, numerics):
    clock = FakeClock()
    monkeypatch.setattr(loop, "device_clock", clock)
    result = rdd_plugins.distill(make_config(), progress=False)
    assert result.meta["runtime"] == DETERMINISTIC_FP32
    during = {n for _, n in clock.readings}
    assert len(during) == 1
    (n,) = during
    assert n.deterministic and n.cudnn_deterministic and not n.cudnn_benchmark
    assert n.float32_matmul_precision == "highest" and not n.cudnn_tf32
    # every step's seconds is read through the device clock: two readings per iteration
    assert len(clock.readings) == 2 * 3 and {d for d, _ in clock.readings} == {"cpu"}
    assert Numerics.current() == numerics


def test_evaluation_allows_tf32_times_every_phase_through_the_device_clock_and_records_it(
        make_config, monkeypatch, numerics):
    distilled = rdd_plugins.distill(make_config(), progress=False)
    clock = FakeClock()
    monkeypatch.setattr(pipeline, "device_clock", clock)
    (row,) = rdd_plugins.evaluate(distilled, progress=False)
    assert row["evaluation"]["runtime"] == FAST and row["evaluation"]["device"] == "cpu"
    (n,) = {n for _, n in clock.readings}
    assert not n.deterministic and not n.cudnn_deterministic
    assert n.float32_matmul_precision == "high" and n.cudnn_tf32
    for seed in row["per_seed"]:  # the fake clock ticks once between consecutive readings
        assert seed["train_seconds"] == 1.0 and seed["clean_seconds"] == 1.0
        assert {r["seconds"] for per_eps in seed["attacks"].values() for r in per_eps.values()} == {1.0}
    assert Numerics.current() == numerics


def test_tf32_and_deterministic_switches_change_no_evaluation_number_on_cpu(make_config):
    distilled = rdd_plugins.distill(make_config(), progress=False)
    (fast,) = rdd_plugins.evaluate(distilled, progress=False)
    (strict,) = rdd_plugins.evaluate(distilled, progress=False, overrides={"deterministic": True, "tf32": False})
    assert strict["evaluation"]["runtime"] == DETERMINISTIC_FP32
    assert without_timings(fast["per_seed"]) == without_timings(strict["per_seed"])


def test_the_switches_take_true_false_or_auto_and_leave_old_checkpoints_resumable(make_config):
    for value in (True, False, "auto"):
        cfg = config_from_dict({"deterministic": value, "tf32": value})
        assert cfg.deterministic == value and cfg.tf32 == value
        assert resolve(overrides={"deterministic": value}).deterministic == value
    assert type(config_from_dict({}).deterministic) is str  # a plain "auto" in every written config
    assert 'deterministic = "auto"' in to_toml(config_from_dict({}).to_dict())
    for bad in ("yes", 1, ["auto"]):
        with pytest.raises(RddError, match='deterministic must be true, false or "auto"'):
            config_from_dict({"deterministic": bad})
    with pytest.raises(RddError, match='tf32 must be true, false or "auto"'):
        config_from_dict({"tf32": "on"})
    # a checkpoint written before the switches existed has the fingerprint of a config without them
    resolved = config_from_dict(make_config()).to_dict()
    older = {k: v for k, v in resolved.items() if k not in ("deterministic", "tf32")}
    assert run_fingerprint(older) == run_fingerprint({**resolved, "deterministic": True, "tf32": True})


def cuda_checkpoint(folder, gpus: int) -> None:
    """Rewrite ``folder``'s CPU checkpoint as if a machine with ``gpus`` GPUs had written it."""
    path = folder / CHECKPOINT_FILE
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    doc = json.loads(meta["json"])
    assert doc["device"] == "cpu"  # the device type a checkpoint is written on is stored with it
    doc["device"] = "cuda"
    for i in range(gpus):
        tensors[f"rng.cuda.{i}"] = torch.full((16,), i, dtype=torch.uint8)
    save_file(tensors, str(path), metadata={**meta, "json": json.dumps(doc)})


def test_a_cuda_checkpoint_from_a_bigger_machine_resumes_on_cpu_and_says_it_is_not_exact(
        make_config, tmp_path, capsys):
    cfg = make_config(iterations=2, checkpoint_every=1)
    rdd_plugins.distill(cfg, out=tmp_path, progress=False)
    cuda_checkpoint(tmp_path, gpus=4)
    capsys.readouterr()
    resumed = rdd_plugins.distill(out=tmp_path, resume=True, progress=False, overrides={"distill": {"iterations": 3}})
    assert resumed.meta["completed_iterations"] == 3
    warnings = [line for line in capsys.readouterr().err.splitlines() if "resumes on" in line]
    assert len(warnings) == 1 and "written on cuda and resumes on cpu" in warnings[0]


def test_cuda_generators_are_restored_by_index_where_this_machine_has_them(monkeypatch):
    states = {f"rng.cuda.{i}": torch.full((16,), i, dtype=torch.uint8) for i in range(12)}
    tensors = {"rng.cpu": torch.get_rng_state(), **states}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    restore_rng(tensors)  # no CUDA here: the CPU generator alone, no error

    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 11)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.update({device: state}))
    restore_rng(tensors)
    assert sorted(restored) == list(range(11))  # GPU 11 is not on this machine
    assert all(int(state[0]) == index for index, state in restored.items())  # rng.cuda.10 on GPU 10


def test_a_malformed_cuda_generator_name_is_an_unreadable_checkpoint(make_config, tmp_path):
    rdd_plugins.distill(make_config(iterations=1, checkpoint_every=1), out=tmp_path, progress=False)
    path = tmp_path / CHECKPOINT_FILE
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file({**tensors, "rng.cuda.x": torch.zeros(16, dtype=torch.uint8)}, str(path), metadata=meta)
    with pytest.raises(RddError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path, torch.device("cpu"))
    assert checkpoint.cuda_rng_states({"rng.cuda.3": torch.zeros(1)}).keys() == {3}


def test_the_cli_switches_reach_the_run_and_resume_keeps_the_runs_own(make_config, tmp_path, capsys):
    cfg = make_config(iterations=1)
    (tmp_path / "run.toml").write_text(to_toml(cfg))
    assert main(["distill", "--config", str(tmp_path / "run.toml"), "--no-deterministic", "--tf32",
                 "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert rdd_plugins.load_distilled(tmp_path / "run").meta["runtime"] == {"deterministic": False, "tf32": True}
    capsys.readouterr()
    assert main(["distill", "--resume", str(tmp_path / "run"), "--deterministic", "--no-progress"]) == 2
    assert "drop --deterministic" in capsys.readouterr().err
