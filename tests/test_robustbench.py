"""RobustBench's protocol on tiny models: robustbench's own ``benchmark()`` end to end with
CIFAR-shaped data injected at its loader seam (no CIFAR here), our AutoAttack adapter, the direct
protocol for Fashion-MNIST-shaped data, and the model_info format."""

import json

import pytest
import torch
from rdd_integrations import robustbench_protocol as rbp
from torch import nn

from rdd_plugins.errors import RddError

EPS = 8 / 255


def linear_model(shape, *, robust_margin=100.0, seed=0):
    """A linear classifier over the flattened image, plus a 'brightness' feature: class 0's logit is
    ``robust_margin * (mean(x) - 0.75)``. Random images (mean ~0.5) are never class 0 and are broken by
    APGD at 8/255; an all-ones image is class 0 with a margin no 8/255 perturbation can cross."""
    torch.manual_seed(seed)
    dim = torch.Size(shape).numel()
    lin = nn.Linear(dim, 10)
    with torch.no_grad():
        lin.weight.normal_(0, 0.01)
        lin.bias.zero_()
        lin.weight[0] += robust_margin / dim
        lin.bias[0] = -0.75 * robust_margin
    return nn.Sequential(nn.Flatten(), lin).eval()


def data_for(model, shape, n=8, *, robust=0, wrong=0, seed=1):
    """n images; the first ``robust`` are all-ones (robust points), labels are the model's own
    predictions except the last ``wrong`` ones (clean-wrong points)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    x[:robust] = 1.0
    with torch.no_grad():
        y = model(x).argmax(1)
    if wrong:
        y[n - wrong:] = (y[n - wrong:] + 1) % 10
    return x, y


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine torch's thread
    pool makes AutoAttack's ~1000 small forward/backward passes 100x slower (threads wait on each
    other at every op)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def inject(monkeypatch):
    """Replace robustbench's test-set loader (the only part that needs CIFAR files) by given data."""
    import robustbench.eval as rb_eval

    calls = []

    def install(x, y):
        def load_clean_dataset(dataset, n_examples, data_dir, prepr):
            calls.append((dataset.value, n_examples, data_dir))
            return x[:n_examples], y[:n_examples]

        monkeypatch.setattr(rb_eval, "load_clean_dataset", load_clean_dataset)
        return calls

    return install


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_robustbench_benchmark_is_importable():
    checked = rbp.check_robustbench()  # first: it imports robustbench with its import warnings off
    from robustbench.eval import benchmark

    assert callable(benchmark) and checked is benchmark


def test_autoattack_module_is_the_pyautoattack_adapter():
    import inspect

    import autoattack
    import pyautoattack
    from autoattack.state import EvaluationState
    from pyautoattack.state import EvaluationState as PyState

    assert issubclass(autoattack.AutoAttack, pyautoattack.AutoAttack) and EvaluationState is PyState
    params = list(inspect.signature(autoattack.AutoAttack).parameters)
    assert params == ["model", "norm", "eps", "seed", "verbose", "attacks_to_run", "version",
                      "is_tf_model", "device", "log_path"]


def test_benchmark_end_to_end_on_injected_cifar_shaped_data(inject):
    from robustbench.eval import benchmark

    shape = (3, 32, 32)
    model = linear_model(shape)
    # 1 robust point, 5 breakable, 2 clean-wrong: clean 6/8, robust 1/8
    x, y = data_for(model, shape, robust=1, wrong=2)
    calls = inject(x, y)
    clean, robust = benchmark(model, n_examples=8, dataset="cifar10", threat_model="Linf", eps=EPS,
                              device=torch.device("cpu"), batch_size=8)
    assert calls == [("cifar10", 8, "./data")]
    assert clean == pytest.approx(accuracy(model, x, y)) == pytest.approx(6 / 8)
    assert 0.0 <= robust <= clean <= 1.0
    assert robust == pytest.approx(1 / 8)  # the robust point survives, every breakable one falls


def test_adapter_api_and_only_clean_correct_points_are_attacked():
    from autoattack import AutoAttack

    shape = (3, 32, 32)
    model = linear_model(shape)
    x, y = data_for(model, shape, n=6, wrong=2)
    with pytest.raises(ValueError, match="custom"):
        AutoAttack(model, norm="Linf", eps=EPS, attacks_to_run=["apgd-ce"], device="cpu")
    adversary = AutoAttack(model, norm="Linf", eps=EPS, version="custom", attacks_to_run=["apgd-ce"],
                           device="cpu", seed=0, verbose=False, log_path="/nonexistent/log.txt")
    x_adv, y_adv = adversary.run_standard_evaluation(x, y, bs=4, return_labels=True)
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= EPS + 1e-6
    assert torch.equal(x_adv[4:], x[4:])  # clean-wrong points are left alone
    assert (y_adv[:4] != y[:4]).all() and (model(x_adv).argmax(1) == y_adv).all()
    only_x = adversary.run_standard_evaluation(x, y, bs=4)
    assert isinstance(only_x, torch.Tensor) and only_x.shape == x.shape


def test_run_robustbench_returns_the_result_dict(inject, capsys):
    shape = (3, 32, 32)
    model = linear_model(shape).train()
    x, y = data_for(model, shape, wrong=3)
    inject(x, y)
    result = rbp.run_robustbench(model, dataset="cifar10", threat_model="Linf", n_examples=8,
                                 batch_size=4)
    assert not model.training
    assert result == {"clean_acc": pytest.approx(5 / 8), "autoattack_acc": 0.0, "n_examples": 8,
                      "eps": pytest.approx(EPS), "dataset": "cifar10", "threat_model": "Linf",
                      "protocol": rbp.PROTOCOL}
    out = capsys.readouterr()
    assert "Clean accuracy" not in out.out and "Clean accuracy" in out.err  # stdout stays clean


def test_run_robustbench_seeds_autoattack(inject, monkeypatch):
    import robustbench.eval as rb_eval

    seeds = []

    class Recording(rb_eval.AutoAttack):
        def __init__(self, *args, **kwargs):
            seeds.append(kwargs.get("seed"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(rb_eval, "AutoAttack", Recording)
    shape = (3, 32, 32)
    model = linear_model(shape)
    inject(*data_for(model, shape, wrong=3))
    for seed in (7, None):
        rbp.run_robustbench(model, dataset="cifar10", threat_model="Linf", n_examples=8, batch_size=4, seed=seed)
    assert seeds == [7, None]  # robustbench itself passes no seed: the clock would pick one
    assert rb_eval.AutoAttack is Recording  # put back afterwards


def test_run_robustbench_refuses_unknown_dataset_and_missing_cifar(tmp_path):
    model = linear_model((3, 32, 32))
    with pytest.raises(RddError, match="fashion-mnist"):
        rbp.run_robustbench(model, dataset="fashion-mnist", threat_model="Linf")
    with pytest.raises(RddError, match="threat model"):
        rbp.run_robustbench(model, dataset="cifar10", threat_model="L1")
    with pytest.raises(RddError) as err:  # robustbench's own loader, no files: no download attempt
        rbp.run_robustbench(model, dataset="cifar10", threat_model="Linf", n_examples=8,
                            data_dir=str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "cifar-10-batches-py") in message
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded or created


def test_run_autoattack_direct_on_fashion_mnist_shaped_points():
    shape = (1, 28, 28)
    model = linear_model(shape)
    x, y = data_for(model, shape, robust=1, wrong=2)
    result = rbp.run_autoattack_direct(model, x, y, threat_model="Linf", eps=EPS, batch_size=8,
                                       dataset="fashion-mnist")
    assert result["clean_acc"] == pytest.approx(accuracy(model, x, y)) == pytest.approx(6 / 8)
    assert result["autoattack_acc"] == pytest.approx(1 / 8)
    assert set(result) == {"clean_acc", "autoattack_acc", "n_examples", "eps", "dataset",
                           "threat_model", "protocol"}
    assert result["n_examples"] == 8 and result["dataset"] == "fashion-mnist"


def test_leaderboard_eps():
    assert rbp.default_eps("cifar10", "Linf") == 8 / 255 and rbp.default_eps("cifar10", "L2") == 0.5
    assert rbp.default_eps("cifar100", "Linf") == 8 / 255
    assert rbp.default_eps("fashion-mnist", "Linf") == 8 / 255
    assert rbp.default_eps("fashion-mnist", "L2") == 0.5


def test_model_info_format():
    info = rbp.model_info(name="DC-IPC10-curvature", dataset="cifar10", threat_model="Linf", eps=8 / 255,
                          clean_acc=0.9325, autoattack_acc=0.4, architecture="ConvNet-3")
    assert {"link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
            "architecture", "eps", "clean_acc", "reported", "autoattack_acc"} == set(info)
    assert info["eps"] == "8/255" and info["clean_acc"] == "93.25" and info["autoattack_acc"] == "40.00"
    assert info["reported"] == info["autoattack_acc"] and info["additional_data"] is False
    json.dumps(info)
    l2 = rbp.model_info(name="x", dataset="cifar10", threat_model="L2", eps=0.5, clean_acc=1.0,
                        autoattack_acc=0.0, architecture="a", footnote="note")
    assert l2["eps"] == "0.5" and l2["clean_acc"] == "100.00" and l2["footnote"] == "note"
    with pytest.raises(RddError):
        rbp.model_info(name="x", dataset="cifar10", threat_model="Linf", eps=EPS, clean_acc=93.25,
                       autoattack_acc=0.4, architecture="a")


def test_check_robustbench_explains_the_stale_torchattacks_copy(monkeypatch):
    import robustbench.eval as rb_eval

    monkeypatch.delattr(rb_eval, "benchmark")
    with pytest.raises(RddError) as err:
        rbp.check_robustbench()
    message = str(err.value)
    assert "pip install --force-reinstall --no-deps robustbench==1.1.1" in message and "\n" not in message
