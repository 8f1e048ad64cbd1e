"""The run config (rdd_plugins/config/): TOML round trips, eps parsing, --set overrides, no torch."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import rdd_plugins.config as config
from rdd_plugins.config import RunConfig, config_from_dict, merge, override_pairs, parse_eps, resolve, to_toml
from rdd_plugins.errors import RddError

CONFIG_DIR = Path(config.__file__).parent


def test_default_config_round_trips_through_toml():
    data = RunConfig().to_dict()
    assert tomllib.loads(to_toml(data)) == data
    assert config_from_dict(tomllib.loads(to_toml(data))) == RunConfig()


def test_nested_params_and_floats_round_trip_exactly():
    data = merge(RunConfig().to_dict(), {
        "backbone": {"params": {"timm:resnet18": {"drop_rate": 0.1}, "width": 4}},
        "distill": {"regularizer": "curvature", "regularizer_params": {"h": 0.5, "lam": 2.0}},
        "evaluate": {"lr": 0.01, "weight_decay": 5e-4, "eps": ["8/255", 0.01], "eps_l2": [0.5],
                     "attack_params": {"pgd": {"steps": 10, "alpha": 0.01}, "fgsm": {}}},
    })
    read_back = tomllib.loads(to_toml(data))
    assert read_back == data
    assert read_back["backbone"]["params"]["timm:resnet18"]["drop_rate"] == 0.1
    assert read_back["evaluate"]["lr"] == 0.01 and read_back["evaluate"]["weight_decay"] == 5e-4


def test_toml_keeps_the_lines_people_grep_for():
    written = to_toml(merge(RunConfig().to_dict(), {"distill": {"ipc": 1, "regularizer": "curvature"}}))
    assert "ipc = 1" in written and 'regularizer = "curvature"' in written


@pytest.mark.parametrize("data, where", [
    ({"seed": None}, "seed"),
    ({"evaluate": {"attack_params": {"pgd": {"steps": None}}}}, "evaluate.attack_params.pgd.steps"),
    ({"evaluate": {"eps": ["8/255", None]}}, "evaluate.eps[1]"),
])
def test_none_is_rejected_naming_the_key(data, where):
    message = f"TOML cannot hold None (config key {where}); use an empty string or omit the key"
    with pytest.raises(RddError, match=re.escape(message)):
        to_toml(data)


def test_unwritable_value_is_an_rdd_error():
    with pytest.raises(RddError, match="cannot write the config as TOML"):
        to_toml({"seed": object()})


@pytest.mark.parametrize("value, threat_model, expected", [
    ("8/255", "Linf", 8 / 255), (" 4/255 ", "Linf", 4 / 255), (0.03, "Linf", 0.03), (0, "Linf", 0.0),
    ("1", "Linf", 1.0), ("0.5", "L2", 0.5), (3, "L2", 3.0),
])
def test_parse_eps_reads_fractions_and_numbers(value, threat_model, expected):
    assert parse_eps(value, threat_model) == pytest.approx(expected)


@pytest.mark.parametrize("value, threat_model, message", [
    ("2/0", "Linf", "eps '2/0' divides by zero"),
    ("-1/255", "Linf", r"eps '-1/255' is negative: eps must be >= 0 \(in pixel units\)"),
    (-0.1, "Linf", r"eps -0.1 is negative: eps must be >= 0"),
    ("-0.5", "L2", r"L2 eps '-0.5' is negative: eps must be >= 0"),
    ("abc", "Linf", "eps 'abc' is not a number or fraction such as 8/255"),
    ("8", "Linf", r"eps '8' is outside \[0, 1\]: eps is in pixel units of \[0, 1\] images \(8/255, not 8\)"),
    (float("nan"), "Linf", r"eps nan is outside \[0, 1\]"),
    ("100", "L2", r"L2 eps '100' is outside \[0, 64\]"),
])
def test_parse_eps_says_what_is_wrong(value, threat_model, message):
    with pytest.raises(RddError, match=message):
        parse_eps(value, threat_model)


def test_set_overrides_update_params_and_merge_leaves_inputs_alone():
    base = RunConfig().to_dict()
    base["distill"]["params"] = {"lr_img": 0.1, "batch_real": 16}
    overrides = override_pairs(["distill.params.lr_img=0.05", "distill.ipc=3", 'data.dataset="synthetic"',
                                "evaluate.eps=[\"4/255\"]", "data.root=/some/where"])
    merged = merge(base, overrides)
    assert merged["distill"]["params"] == {"lr_img": 0.05, "batch_real": 16}  # dotted key: one entry
    assert merged["distill"]["ipc"] == 3 and merged["data"]["dataset"] == "synthetic"
    assert merged["data"]["root"] == "/some/where"  # not TOML: taken as a bare string
    assert base["distill"]["params"] == {"lr_img": 0.1, "batch_real": 16}
    # A whole table replaces the *params table instead of updating it.
    replaced = merge(base, override_pairs(["distill.params={outer_loop = 2}"]))
    assert replaced["distill"]["params"] == {"outer_loop": 2}


@pytest.mark.parametrize("pair, message", [
    ("distill.ipc", "must look like section.key=value"),
    ("distill..ipc=3", "has an empty key"),
    ("distill.ipc=3", None),
])
def test_override_pairs_rejects_malformed_pairs(pair, message):
    if message is None:
        assert override_pairs([pair]) == {"distill": {"ipc": 3}}
    else:
        with pytest.raises(RddError, match=message):
            override_pairs([pair])


def test_resolve_layers_base_file_and_overrides(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[distill]\nipc = 3\n[distill.params]\nlr_img = 0.2\n')
    resolved = resolve(cfg, override_pairs(["distill.iterations=7"]),
                       base={"distill": {"ipc": 5, "params": {"batch_real": 8}}, "seed": 4})
    assert (resolved.seed, resolved.distill.ipc, resolved.distill.iterations) == (4, 3, 7)
    assert resolved.distill.params == {"lr_img": 0.2}  # the file's params table replaces the base's


def test_resolve_device_is_still_importable_from_config():
    from rdd_plugins.config import resolve_device
    from rdd_plugins.runtime import resolve_device as runtime_resolve_device

    assert resolve_device is runtime_resolve_device
    assert str(resolve_device("cpu")) == "cpu"


def test_importing_the_config_does_not_import_torch():
    code = "import sys, rdd_plugins.config; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_config_modules_name_no_torch_import():
    # The subprocess check above also depends on what rdd_plugins/__init__ imports; this one holds
    # the config's own modules to it, whatever the package around them does.
    for path in CONFIG_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            assert not any(n == "torch" or n.startswith("torch.") for n in names), f"{path.name} imports torch"


def test_a_key_added_later_is_left_out_of_the_config_while_it_holds_its_old_value():
    # Checkpoint fingerprints, seed caches, finished sets and study folders compare to_dict(): a key
    # the package gained later must not make what was written before it stop matching.
    from rdd_plugins.config.schema import KEYS_ADDED_LATER

    plain = RunConfig().to_dict()
    for (section, key), old in KEYS_ADDED_LATER.items():
        assert key not in plain[section]  # as configs were written before the key existed ...
        assert getattr(getattr(config_from_dict(plain), section), key) == old  # ... and read back with it
    assert config_from_dict({"evaluate": {"augment": "dsa"}}).to_dict()["evaluate"]["augment"] == "dsa"
