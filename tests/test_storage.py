import json

import pytest
import torch
from safetensors.torch import save_file

from rdd_plugins.errors import RddError
from rdd_plugins.storage import load_distilled, save_distilled

META = {"dataset": {"name": "toy", "classes": ["a", "b", "c"], "channels": 1, "image_size": [4, 4],
                    "mean": [0.5], "std": [0.25]}, "ipc": 2, "distiller": "gm", "regularizer": "none"}


def make_set(tmp_path):
    torch.manual_seed(0)
    images = torch.rand(6, 1, 4, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    save_distilled(tmp_path, images, labels, META)
    return images, labels


def test_round_trip_is_exact(tmp_path):
    images, labels = make_set(tmp_path)
    loaded = load_distilled(tmp_path)
    assert torch.equal(loaded.images, images) and torch.equal(loaded.labels, labels)
    assert loaded.meta["dataset"]["classes"] == ["a", "b", "c"] and loaded.meta["format_version"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.safetensors", "meta.json"]


def test_save_rejects_out_of_range_images(tmp_path):
    with pytest.raises(RddError, match=r"\[0, 1\]"):
        save_distilled(tmp_path, torch.rand(6, 1, 4, 4) * 2, torch.tensor([0, 0, 1, 1, 2, 2]), META)


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: (d / "meta.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "meta.json").unlink(), "meta.json is missing"),
    (lambda d: (d / "images.safetensors").write_bytes(b"\x00" * 20), "not a readable safetensors"),
    (lambda d: (d / "images.safetensors").write_bytes((d / "images.safetensors").read_bytes()[:-40]),
     "not a readable safetensors"),
    (lambda d: save_file({"images": torch.rand(6, 1, 4, 4) * 3, "labels": torch.zeros(6, dtype=torch.long)},
                         d / "images.safetensors"), r"\[0, 1\]"),
    (lambda d: save_file({"images": torch.rand(6, 1, 4, 4), "labels": torch.full((6,), 7)},
                         d / "images.safetensors"), "labels must lie in 0..2"),
    (lambda d: save_file({"images": torch.rand(6, 1, 5, 5), "labels": torch.zeros(6, dtype=torch.long)},
                         d / "images.safetensors"), "meta.json says"),
    (lambda d: save_file({"images": torch.rand(4, 1, 4, 4), "labels": torch.zeros(4, dtype=torch.long)},
                         d / "images.safetensors"), "ipc 2"),
    (lambda d: save_file({"images": torch.rand(6, 1, 4, 4), "labels": torch.zeros(6, dtype=torch.long),
                          "extra": torch.zeros(1)}, d / "images.safetensors"), "expected tensors"),
    (lambda d: save_file({"images": torch.rand(6, 1, 4, 4).double(), "labels": torch.zeros(6, dtype=torch.long)},
                         d / "images.safetensors"), "float32"),
    (lambda d: (d / "meta.json").write_text(json.dumps({"ipc": 2})), "dataset"),
])
def test_load_rejects_corrupt_or_mismatched_files(tmp_path, corrupt, message):
    make_set(tmp_path)
    corrupt(tmp_path)
    with pytest.raises(RddError, match=message) as err:
        load_distilled(tmp_path)
    assert "\n" not in str(err.value)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(RddError, match="does not exist"):
        load_distilled(tmp_path / "nope")


def test_no_pickle_in_the_package():
    import pathlib

    import rdd_plugins

    root = pathlib.Path(rdd_plugins.__file__).parent
    for path in [*root.rglob("*.py"), *(root.parent / "integrations").rglob("*.py")]:
        text = path.read_text()
        assert "import pickle" not in text, path
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}: {line}"


def test_soft_labels_round_trip_and_are_validated(tmp_path):
    images, labels = torch.rand(6, 1, 4, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    soft = torch.randn(6, 3)
    save_distilled(tmp_path, images, labels, META, soft_labels=soft)
    assert torch.equal(load_distilled(tmp_path).soft_labels, soft)
    with pytest.raises(RddError, match="soft_labels"):
        save_distilled(tmp_path / "bad", images, labels, META, soft_labels=torch.randn(6, 4))


def test_per_crop_soft_labels_round_trip_with_their_boxes_and_are_validated(tmp_path):
    from rdd_plugins.crops import sample_crop_boxes

    images, labels = torch.rand(6, 1, 4, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    boxes = sample_crop_boxes(6, 2, 0.5, (4, 4), torch.Generator().manual_seed(0))
    soft = torch.randn(6, 2, 3)
    save_distilled(tmp_path, images, labels, META, soft_labels=soft, crop_boxes=boxes)
    loaded = load_distilled(tmp_path)
    assert torch.equal(loaded.soft_labels, soft) and torch.equal(loaded.crop_boxes, boxes)
    with pytest.raises(RddError, match="one per crop view"):
        save_distilled(tmp_path / "bad", images, labels, META, soft_labels=torch.randn(6, 3), crop_boxes=boxes)
    with pytest.raises(RddError, match="without soft_labels"):
        save_distilled(tmp_path / "bad", images, labels, META, crop_boxes=boxes)
    outside = boxes.clone()
    outside[0, 0, 0] = 0.9
    with pytest.raises(RddError, match="inside the image"):
        save_distilled(tmp_path / "bad", images, labels, META, soft_labels=soft, crop_boxes=outside)


@pytest.mark.parametrize("boxes, soft, message", [
    (torch.zeros(6, 0, 5), torch.zeros(6, 0, 3), "views >= 1"),
    (torch.tensor([[[0.5, 0.0, 0.75, 1.0, 0.0]]]).expand(6, 1, 5).contiguous(), torch.zeros(6, 1, 3), "inside"),
    (torch.tensor([[[0.0, 0.0, 1.0, 1.0, 0.0]]]).expand(6, 1, 5).contiguous(), None, "with it 'crop_boxes'"),
])
def test_a_file_with_bad_crop_views_is_a_one_line_error(tmp_path, boxes, soft, message):

    save_distilled(tmp_path, torch.rand(6, 1, 4, 4), torch.tensor([0, 0, 1, 1, 2, 2]), META)
    tensors = {"images": torch.rand(6, 1, 4, 4), "labels": torch.tensor([0, 0, 1, 1, 2, 2]), "crop_boxes": boxes}
    if soft is not None:
        tensors["soft_labels"] = soft
    save_file(tensors, str(tmp_path / "images.safetensors"))
    with pytest.raises(RddError, match=message):
        load_distilled(tmp_path)
