"""The example outside plugin, found through distribution metadata as an installed package is."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rdd_plugins
from rdd_plugins import plugins

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "rdd-example-plugin"


@pytest.fixture
def installed_example(tmp_path, monkeypatch):
    """What `pip install` leaves behind: the package importable and a dist-info with its entry points."""
    dist_info = tmp_path / "rdd_example_plugin-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: rdd-example-plugin\nVersion: 0.1.0\n")
    (dist_info / "entry_points.txt").write_text("[rdd_plugins]\nexample = rdd_example_plugin\n")
    paths = [str(tmp_path), str(EXAMPLE)]
    for p in paths:
        monkeypatch.syspath_prepend(p)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]))
    plugins.reset()
    return tmp_path


def test_example_parts_are_listed_and_attributed(installed_example):
    registry = rdd_plugins.get_registry()
    assert registry.get("attacks", "random-sign").plugin == "example"
    assert registry.get("backbones", "mlp").plugin == "example"
    assert registry.get("attack_suites", "random-then-pgd").plugin == "example"
    assert plugins.plugin_failures() == []


def test_example_parts_work_by_name_in_the_cli(installed_example, tmp_path):
    rdd = str(Path(sys.executable).parent / "rdd")
    listed = json.loads(subprocess.run([rdd, "plugins", "--json"], capture_output=True, text=True,
                                       check=True).stdout)
    assert any(e["name"] == "random-sign" and e["plugin"] == "example" for e in listed["attacks"])
    tiny = ["--set", 'data.params={num_classes = 3, image_size = 8, per_class = 12}', "--device", "cpu",
            "--no-progress"]
    subprocess.run([rdd, "distill", "--dataset", "synthetic", "--ipc", "2", "--backbone", "mlp", "--iterations", "2",
                    "--set", "distill.params={batch_real = 8, outer_loop = 2, inner_loop = 1}",
                    "--out", str(tmp_path / "set"), *tiny], check=True, capture_output=True)
    out = subprocess.run([rdd, "evaluate", str(tmp_path / "set"), "--suite", "random-then-pgd", "--eps", "8/255",
                          "--set", "evaluate.epochs=5", "--out", str(tmp_path / "eval"), *tiny],
                         check=True, capture_output=True, text=True)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())["results"][0]
    assert [a["attack"] for a in results["evaluation"]["attacks"]] == ["random-sign", "pgd"]
    assert results["evaluation"]["backbone"] == "mlp" and list(results["summary"]["worst"]["Linf"]) == ["8/255"]
    assert "clean" in out.stdout


def test_json_listing_names_the_example_distribution_and_strict_flag_fails_on_a_broken_plugin(
        installed_example, tmp_path, monkeypatch):
    rdd = str(Path(sys.executable).parent / "rdd")
    listed = json.loads(subprocess.run([rdd, "plugins", "--json"], capture_output=True, text=True,
                                       check=True).stdout)
    (example,) = [p for p in listed["plugins"] if p["name"] == "example"]
    assert example["distribution"] == "rdd-example-plugin" and example["version"] == "0.1.0"
    assert example["hooks"] == ["rdd_register_attack_suites", "rdd_register_attacks", "rdd_register_backbones"]

    broken = installed_example / "rdd_broken-0.1.dist-info"
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: rdd-broken\nVersion: 0.1\n")
    (broken / "entry_points.txt").write_text("[rdd_plugins]\nbroken = rdd_no_such_module\n")
    lenient = subprocess.run([rdd, "plugins", "--json"], capture_output=True, text=True, check=True)
    (failure,) = json.loads(lenient.stdout)["failed_plugins"]
    assert failure["name"] == "broken" and failure["distribution"] == "rdd-broken"
    strict = subprocess.run([rdd, "--strict", "plugins"], capture_output=True, text=True)
    assert strict.returncode == 2 and "plugin 'broken' (rdd-broken) failed" in strict.stderr
