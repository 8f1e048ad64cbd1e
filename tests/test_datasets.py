import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import rdd_plugins
from rdd_plugins.errors import RddError
from rdd_integrations import torchvision_datasets as tvd


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def fake_fashion(folder: Path, gz: bool = True, n: int = 12) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    suffix = "-ubyte.gz" if gz else "-ubyte"
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3{suffix}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1{suffix}", np.arange(n) % 10, gz)
    return images


@pytest.mark.parametrize("layout, gz", [("", True), ("FashionMNIST/raw", False), ("fashion-mnist", True)])
def test_fashion_mnist_reads_idx_files_from_data_root(tmp_path, layout, gz):
    images = fake_fashion(tmp_path / layout if layout else tmp_path, gz)
    data = rdd_plugins.get_registry().create("datasets", "fashion-mnist", str(tmp_path), "test")
    assert data.images.shape == (12, 1, 28, 28) and data.images.dtype == torch.float32
    assert torch.equal((data.images[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(images))
    assert data.labels.tolist() == [i % 10 for i in range(12)]
    assert data.num_classes == 10 and data.mean == (0.2860,)


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(tvd, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(RddError, match="apt-get install dataset-fashion-mnist"):
        tvd.fashion_mnist(str(tmp_path), "train", download=False)


def test_truncated_idx_file_is_rejected(tmp_path):
    fake_fashion(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    with pytest.raises(RddError, match="truncated"):
        tvd.fashion_mnist(str(tmp_path), "test")


@pytest.mark.skipif(not tvd.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian_package():
    data = tvd.fashion_mnist(None, "test", download=False)
    assert data.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.labels).tolist() == [1000] * 10
    assert abs(float(data.images.mean()) - 0.2868) < 0.01  # test-split mean, in [0, 1] pixels


def test_cifar10_through_torchvision_shape(monkeypatch, tmp_path):
    import torchvision.datasets

    class FakeCIFAR10:
        classes = [f"c{i}" for i in range(10)]

        def __init__(self, root, train, download):
            rng = np.random.default_rng(1 if train else 2)
            self.data = rng.integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
            self.targets = list(range(10)) * 2

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    data = rdd_plugins.get_registry().create("datasets", "cifar10", str(tmp_path), "train")
    assert data.images.shape == (20, 3, 32, 32) and data.channels == 3
    ref = FakeCIFAR10(None, True, False).data
    assert torch.equal((data.images * 255).round().to(torch.uint8), torch.from_numpy(ref).permute(0, 3, 1, 2))


def test_missing_cifar_is_a_clear_error(tmp_path):
    with pytest.raises(RddError, match="cifar100 not found"):
        rdd_plugins.get_registry().create("datasets", "cifar100", str(tmp_path), "test")


def test_synthetic_any_shape_in_range():
    data = rdd_plugins.get_registry().create("datasets", "synthetic", None, "train", channels=3,
                                             image_size=(16, 12), num_classes=5, per_class=3)
    assert data.images.shape == (15, 3, 16, 12)
    assert 0 <= float(data.images.min()) and float(data.images.max()) <= 1
    assert torch.bincount(data.labels).tolist() == [3] * 5


@pytest.mark.parametrize("split, n", [("train", 7), ("test", 3)])
def test_download_path_returns_the_requested_split(tmp_path, monkeypatch, split, n):
    """Without local files the torchvision download runs; each split must come from its own files."""
    import torchvision.datasets

    class FakeDownload:
        def __init__(self, root, train, download):
            raw = Path(root) / "FashionMNIST" / "raw"
            raw.mkdir(parents=True, exist_ok=True)
            prefix, count = ("train", 7) if train else ("t10k", 3)
            write_idx(raw / f"{prefix}-images-idx3-ubyte", np.zeros((count, 28, 28)), gz=False)
            write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.zeros(count), gz=False)

    monkeypatch.setattr(tvd, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeDownload)
    (tmp_path / "root").mkdir()
    data = tvd.fashion_mnist(str(tmp_path / "root"), split)
    assert data.images.shape[0] == n


def test_a_named_data_root_is_the_only_place_looked_in(tmp_path):
    """A root the user names must hold the data: Debian's copy is not used silently in its place."""
    with pytest.raises(RddError, match="does not exist"):
        tvd.fashion_mnist(str(tmp_path / "typo"), "test", download=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RddError, match=f"looked in {tmp_path / 'empty'},"):
        tvd.fashion_mnist(str(tmp_path / "empty"), "test", download=False)
