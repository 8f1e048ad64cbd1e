"""Shared fixtures: tiny configs on generated data, so the suite runs in minutes on 2 CPU cores."""

import os

import pytest

os.environ.setdefault("RDD_NO_PROGRESS", "1")


def pytest_addoption(parser):
    # `pytest --device cuda` runs the tiny configs on a GPU (benchmarks/gpu_check.py does)
    parser.addoption("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                     help="the device of the tests' tiny runs (default cpu)")


def pytest_configure(config):
    os.environ["RDD_TEST_DEVICE"] = config.getoption("--device")


def tiny_config(**distill) -> dict:
    """A synthetic-data run small enough for a unit test (width-8 ConvNet, 8x8 images)."""
    return {
        "seed": 0,
        "device": os.environ.get("RDD_TEST_DEVICE", "cpu"),
        "data": {"dataset": "synthetic", "params": {"num_classes": 4, "image_size": 8, "per_class": 24}},
        "backbone": {"name": "convnet", "params": {"width": 8, "depth": 2}},
        "distill": {"ipc": 2, "iterations": 3,
                    "params": {"batch_real": 16, "outer_loop": 2, "inner_loop": 2}, **distill},
        "evaluate": {"seeds": 2, "epochs": 20, "attack_params": {"steps": 3}, "eps": ["2/255", "8/255"]},
    }


@pytest.fixture
def tiny():
    return tiny_config()


@pytest.fixture
def make_config():
    """``make_config(**distill_overrides)`` -> a fresh tiny config dict."""
    return tiny_config


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on tiny models a second one only waits on a busy CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fresh_plugins():
    """Each test sees freshly loaded plugins and leaves none registered behind."""
    from rdd_plugins import plugins

    plugins.reset()
    yield
    plugins.reset()
