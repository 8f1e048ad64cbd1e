"""Signs of life in the long phases: sre2l's teacher, herding's feature network and AutoAttack show
a bar with a unit that means something when progress is on, print nothing when it is off, and
compute the same numbers either way."""

import pytest
import torch

import rdd_plugins
from rdd_plugins.distillation.contract import DistillContext
from rdd_plugins.progress import bar


@pytest.fixture
def progress_on(monkeypatch):
    monkeypatch.delenv("RDD_NO_PROGRESS", raising=False)  # conftest silences bars for the suite


@pytest.fixture
def bars(monkeypatch):
    """``bars(module)``: the bars that ``module`` opens from now on, recorded to read their counts
    (a closed bar that does not stay on screen leaves no final count in the output)."""
    opened = []

    def recording(module):
        def bar_recorded(*args, **kwargs):
            opened.append(bar(*args, **kwargs))
            opened[-1].asked = kwargs  # tqdm drops some attributes (desc) on close
            return opened[-1]
        monkeypatch.setattr(module, "bar", bar_recorded)
        return opened
    return recording


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only waits


def tiny_context(make_config, progress, norm="batch"):
    registry = rdd_plugins.get_registry()
    train = registry.create("datasets", "synthetic", None, "train", **make_config()["data"]["params"])

    def make_model():
        return registry.create("backbones", "convnet", 1, 4, 8, train.mean, train.std, width=8, depth=2, norm=norm)

    return DistillContext(train=train, ipc=2, iterations=1, make_model=make_model,
                          regularizer=registry.create("regularizers", "none"), device=torch.device("cpu"),
                          progress=progress)


def test_bar_names_its_unit_and_is_silenced(progress_on, capsys, monkeypatch):
    with bar(total=3, desc="teacher", unit="batch") as pbar:
        pbar.update(3)
    err = capsys.readouterr().err
    assert "teacher" in err and "0/3" in err and "batch/s" in err
    for _ in bar(range(3), desc="quiet", unit="batch", enabled=False):
        pass
    monkeypatch.setenv("RDD_NO_PROGRESS", "1")
    for _ in bar(range(3), desc="quiet", unit="batch"):
        pass
    assert capsys.readouterr().err == ""


def run_init(name, make_config, progress, capsys, **params):
    distiller = rdd_plugins.get_registry().create("distillers", name, **params)
    torch.manual_seed(0)
    state = distiller.init(tiny_context(make_config, progress))
    return state, capsys.readouterr().err


@pytest.mark.parametrize("name, module, params, shown", [
    ("sre2l", "sre2l", {"teacher_epochs": 2, "batch_size": 32, "relabel_crops": 0}, "sre2l teacher"),
    ("herding", "subsets", {"feature_epochs": 2, "batch_size": 32}, "herding features"),
])
def test_distiller_phase_shows_batches_only_when_asked_and_keeps_its_numbers(name, module, params, shown,
                                                                             make_config, capsys, progress_on,
                                                                             bars):
    import importlib

    quiet, quiet_err = run_init(name, make_config, False, capsys, **params)
    opened = bars(importlib.import_module(f"rdd_plugins.builtin.distillers.{module}"))
    shown_state, err = run_init(name, make_config, True, capsys, **params)
    assert quiet_err == ""
    batches = 2 * 3  # 2 epochs over the synthetic set's 4 x 24 images in batches of 32
    assert shown in err and f"0/{batches}" in err and "batch/s" in err
    assert [(b.n, b.total) for b in opened] == [(batches, batches)]  # every training batch, no more
    assert quiet.keys() == shown_state.keys()
    for key, value in quiet.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, shown_state[key]), key
        else:
            assert value == shown_state[key], key


def linear_model(shape, seed=0):
    """A random linear classifier over 10 classes; AutoAttack breaks most of its points."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(torch.Size(shape).numel(), 10)).eval()


def test_autoattack_direct_shows_each_attack_counting_points(progress_on, capsys, bars):
    from rdd_integrations import robustbench_protocol as rbp

    shape = (1, 28, 28)
    model = linear_model(shape)
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[-1] = (y[-1] + 1) % 10  # one clean-wrong point: AutoAttack skips it
    quiet = rbp.run_autoattack_direct(model, x, y, threat_model="Linf", eps=8 / 255, batch_size=4,
                                      progress=False)
    assert capsys.readouterr().err == ""
    opened = bars(rbp)
    shown = rbp.run_autoattack_direct(model, x, y, threat_model="Linf", eps=8 / 255, batch_size=4)
    err = capsys.readouterr().err
    assert "AutoAttack 1/4 apgd-ce" in err and "point/s" in err
    assert opened[0].asked["desc"] == "AutoAttack 1/4 apgd-ce" and opened[0].n == 5  # the clean-correct points
    assert shown == quiet


def test_robustbench_benchmark_says_what_runs_before_it_starts(progress_on, capsys, monkeypatch):
    import robustbench.eval as rb_eval
    from rdd_integrations import robustbench_protocol as rbp

    shape = (3, 32, 32)
    model = linear_model(shape)
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    monkeypatch.setattr(rb_eval, "load_clean_dataset", lambda dataset, n, data_dir, prepr: (x[:n], y[:n]))
    rbp.run_robustbench(model, dataset="cifar10", threat_model="Linf", n_examples=4, batch_size=4,
                        progress=False)
    assert "robustbench benchmark" not in capsys.readouterr().err
    rbp.run_robustbench(model, dataset="cifar10", threat_model="Linf", n_examples=4, batch_size=4)
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith("robustbench benchmark") and "on the first 4 cifar10 test points" in first
    assert "8/255" in first and "AutoAttack 1/4 apgd-ce" in err
