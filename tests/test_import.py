"""``rdd import``: other tools' files, written as they write them, come back as their pixels; nothing
is unpickled; a set outside [0, 1] is kept as made; what does not fit the dataset is one line."""

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import rdd_plugins
from rdd_plugins import hookimpl, plugins
from rdd_plugins.cli import main
from rdd_plugins.data import ImageData
from rdd_plugins.errors import RddError, UnknownNameError
from rdd_plugins.importing import ReadSet
from rdd_plugins.storage import load_distilled, save_distilled

PARAMS = {"num_classes": 3, "image_size": 8, "per_class": 5}
MEAN, STD = 0.5, 0.25  # the synthetic dataset's: the tools' own values are known only for their datasets
TINY_EVAL = {"device": "cpu", "backbone": {"params": {"width": 4, "depth": 2}},
             "evaluate": {"seeds": 1, "epochs": 2, "n_test": 20, "eps": ["8/255"], "attack_params": {"steps": 2}}}


def pixels(channels=1, ipc=2, low=0.0, high=1.0, seed=0):
    """Images on the 8-bit grid (PNG keeps them exactly) spanning exactly [low, high], ipc per class."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 256, (3 * ipc, channels, 8, 8), generator=g).float() / 255
    levels.view(-1)[:2] = torch.tensor([0.0, 1.0])
    return low + (high - low) * levels, torch.arange(3).repeat_interleave(ipc)


def normalized(images):
    return (images - MEAN) / STD


def import_(src, out, fmt, channels=1, **kwargs):
    return rdd_plugins.import_set(src, format=fmt, dataset="synthetic", out=out,
                                  dataset_params={**PARAMS, "channels": channels}, **kwargs)


def save_png(array_chw, path, as_rgb=False):
    from PIL import Image

    array = (array_chw.permute(1, 2, 0) * 255).round().byte().numpy()
    if as_rgb and array.shape[2] == 1:  # torchvision's save_image triples a grey channel
        array = np.repeat(array, 3, axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.squeeze(2) if array.shape[2] == 1 else array).save(path)


@pytest.mark.parametrize("layout", ["results", "dict", "pair"])
def test_dc_files_come_back_as_their_pixels(tmp_path, layout):
    images, labels = pixels()
    other, _ = pixels(seed=1)
    src, options = tmp_path / "res_DC_synthetic_ConvNet_2ipc.pt", {}
    if layout == "results":  # DC/DSA/DM's main.py: one [image_syn, label_syn] per experiment
        saved = {"data": [[normalized(other), labels], [normalized(images), labels]],
                 "accs_all_exps": {"ConvNet": [0.5, 0.6]}}
        options = {"index": 1}
    elif layout == "dict":
        saved = {"image_syn": normalized(images), "label_syn": labels.float()}
    else:
        saved = [normalized(images), labels]
    torch.save(saved, src)
    import_(src, tmp_path / "set", "dc", **options)
    loaded = load_distilled(tmp_path / "set")
    assert torch.allclose(loaded.images, images, atol=1e-6) and torch.equal(loaded.labels, labels)
    assert loaded.meta["ipc"] == 2 and loaded.meta["dataset"]["classes"] == ["class0", "class1", "class2"]
    imported = loaded.meta["imported"]
    assert imported["format"] == "dc" and imported["plugin"] == "rdd_plugins.builtin.set_formats"
    assert imported["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert imported["source"] == str(src.resolve()) and imported["clipped"] is False
    assert any("un-normalized with the dataset's mean [0.5]" in c for c in imported["converted"])
    expected = (1, 2) if layout == "results" else (None, None)
    assert (imported.get("experiment"), imported.get("experiments")) == expected


def test_a_dc_set_outside_unit_range_is_kept_as_made_and_clipped_only_on_request(tmp_path):
    images, labels = pixels(low=-0.85, high=2.25)  # DC never clips: its Fashion-MNIST sets span so
    src, out = tmp_path / "res.pt", tmp_path / "set"
    torch.save({"data": [[normalized(images), labels]], "accs_all_exps": {}}, src)
    import_(src, out, "dc")
    kept = load_distilled(out)
    assert torch.allclose(kept.images, images, atol=1e-5) and kept.images.min() < 0 and kept.images.max() > 1
    assert kept.meta["imported"]["clipped"] is False
    assert kept.meta["imported"]["pixel_range"] == pytest.approx([-0.85, 2.25], abs=1e-5)
    with pytest.raises(RddError, match="already holds a distilled set; pass --overwrite") as err:
        import_(src, out, "dc", clip=True)
    assert "\n" not in str(err.value)
    (out / "evaluation").mkdir()  # derived from the old set: it goes with it
    import_(src, out, "dc", clip=True, overwrite=True)
    clipped = load_distilled(out)
    assert torch.allclose(clipped.images, images.clamp(0, 1), atol=1e-6)
    assert clipped.meta["imported"]["clipped"] is True and "clipped to [0, 1]" in clipped.meta["imported"]["converted"]
    assert clipped.meta["imported"]["pixel_range"] == pytest.approx([-0.85, 2.25], abs=1e-5)
    assert sorted(p.name for p in out.iterdir()) == ["images.safetensors", "meta.json"]


def test_only_an_unclipped_import_may_leave_unit_range(tmp_path):
    images, labels = pixels(low=-0.5, high=1.5)
    dataset = {"name": "synthetic", "classes": ["a", "b", "c"], "channels": 1, "image_size": [8, 8],
               "mean": [0.5], "std": [0.25]}
    save_distilled(tmp_path / "kept", images, labels, {"dataset": dataset, "imported": {"clipped": False}})
    for imported in ({}, {"imported": {"clipped": True}}, {"imported": {"clipped": "false"}}):
        with pytest.raises(RddError, match=r"\[0, 1\]"):
            save_distilled(tmp_path / "other", images, labels, {"dataset": dataset, **imported})
    meta_path = tmp_path / "kept" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["imported"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RddError, match=r"\[0, 1\]"):
        load_distilled(tmp_path / "kept")
    with pytest.raises(RddError, match="NaN"):
        save_distilled(tmp_path / "nan", images.clone().fill_(float("nan")), labels,
                       {"dataset": dataset, "imported": {"clipped": False}})


def test_evaluate_trains_on_an_imported_set_outside_unit_range(tmp_path):
    images, labels = pixels(low=-0.85, high=2.25)
    torch.save([normalized(images), labels], tmp_path / "res.pt")
    import_(tmp_path / "res.pt", tmp_path / "set", "dc")
    # the dataset's parameters reach the evaluation through the set's meta: 3 classes of 8x8
    rows = rdd_plugins.evaluate(tmp_path / "set", overrides=TINY_EVAL, progress=False)
    assert len(rows) == 1 and rows[0]["label"] == "dc+imported" and rows[0]["dataset"] == "synthetic"
    assert rows[0]["evaluation"]["n_test"] == 15 and 0.0 <= rows[0]["per_seed"][0]["clean"] <= 1.0


def test_mtt_keeps_soft_labels_and_the_learned_lr_and_refuses_zca(tmp_path):
    images, labels = pixels()
    soft = torch.randn(6, 3, generator=torch.Generator().manual_seed(2)) + 4 * F.one_hot(labels, 3)
    run = tmp_path / "logged_files" / "synthetic" / "run-1"
    run.mkdir(parents=True)
    torch.save(normalized(images), run / "images_best.pt")
    torch.save(soft, run / "labels_best.pt")
    torch.save(torch.tensor(0.0123), run / "lr_best.pt")
    import_(run, tmp_path / "best", "mtt")
    best = load_distilled(tmp_path / "best")
    assert torch.allclose(best.images, images, atol=1e-6) and torch.equal(best.labels, labels)
    assert torch.equal(best.soft_labels, soft)
    assert best.meta["imported"]["lr"] == pytest.approx(0.0123)
    assert set(best.meta["imported"]["file_sha256"]) == {"images_best.pt", "labels_best.pt", "lr_best.pt"}
    # one checkpoint's files, named by the images file; one-hot float rows are class indices
    torch.save(normalized(images), run / "images_300.pt")
    torch.save(F.one_hot(labels, 3).float(), run / "labels_300.pt")
    import_(run / "images_300.pt", tmp_path / "at300", "mtt")
    at300 = load_distilled(tmp_path / "at300")
    assert at300.soft_labels is None and torch.equal(at300.labels, labels) and "lr" not in at300.meta["imported"]
    with pytest.raises(RddError, match="un-whitened without the ZCA matrix") as err:
        import_(run, tmp_path / "zca", "mtt", zca=True)
    assert "\n" not in str(err.value) and not (tmp_path / "zca").exists()


def test_sre2l_class_folders_of_png_and_jpeg(tmp_path):
    images, labels = pixels(channels=3)
    root = tmp_path / "syn_data"
    for i, (image, label) in enumerate(zip(images, labels)):
        save_png(image, root / f"new{label:03d}" / f"class{label:03d}_id{i:03d}.png")
    (root / "new001" / "notes.txt").write_text("not an image")
    import_(root, tmp_path / "set", "sre2l", channels=3)
    loaded = load_distilled(tmp_path / "set")
    assert torch.equal(loaded.images, images) and torch.equal(loaded.labels, labels)
    assert loaded.meta["ipc"] == 2 and loaded.meta["imported"]["files"] == 6
    save_png(images[0], root / "new002" / "zz.jpg")
    import_(root, tmp_path / "set", "sre2l", channels=3, overwrite=True)
    loaded = load_distilled(tmp_path / "set")
    assert loaded.images.shape[0] == 7 and loaded.labels[-1] == 2 and "ipc" not in loaded.meta


class Fruit:
    """A dataset whose class names do not sort in class order, to tell mapping by name from order."""

    @hookimpl
    def rdd_register_datasets(self, register):
        def fruit(root=None, split="test"):
            images, labels = pixels()
            return ImageData(images, labels, ["zebra", "apple", "mango"], (0.5,), (0.25,), name="fruit")

        register("fruit", fruit, "three named classes")


def test_folder_maps_class_names_or_takes_sorted_order(tmp_path):
    plugins.register_plugin(Fruit(), name="fruit")
    images, labels = pixels()
    names = ["zebra", "apple", "mango"]
    root = tmp_path / "tree"
    for i, (image, label) in enumerate(zip(images, labels)):
        save_png(image, root / names[label] / f"{i}.png", as_rgb=True)
    rdd_plugins.import_set(root, format="folder", dataset="fruit", out=tmp_path / "by-name")
    by_name = load_distilled(tmp_path / "by-name")
    assert torch.equal(by_name.labels.sort().values, labels.sort().values)
    assert torch.equal(by_name.images[by_name.labels == 1], images[labels == 1])  # apple is class 1
    assert by_name.images.shape[1] == 1
    rdd_plugins.import_set(root, format="folder", dataset="fruit", out=tmp_path / "by-order", by="order")
    assert torch.equal(load_distilled(tmp_path / "by-order").images[:2], images[labels == 1])  # apple first
    (root / "apple").rename(root / "Apple")
    with pytest.raises(RddError, match="named like the classes of dataset 'fruit' and some not \\(Apple\\)"):
        rdd_plugins.import_set(root, format="folder", dataset="fruit", out=tmp_path / "mixed")


@pytest.mark.parametrize("suffix, is_normalized", [(".safetensors", False), (".npz", True)])
def test_tensor_files_in_pixels_or_normalized(tmp_path, suffix, is_normalized):
    images, labels = pixels(low=-0.2, high=1.1)
    stored = normalized(images) if is_normalized else images
    path = tmp_path / f"set{suffix}"
    if suffix == ".npz":
        np.savez(path, images=stored.numpy(), labels=labels.numpy())
    else:
        save_file({"images": stored.contiguous(), "labels": labels}, path)
    import_(path, tmp_path / "set", "tensors", **({"normalized": True} if is_normalized else {}))
    loaded = load_distilled(tmp_path / "set")
    assert torch.allclose(loaded.images, images, atol=1e-6) and torch.equal(loaded.labels, labels)


class Custom:
    def __init__(self):
        self.images = torch.zeros(1)


@pytest.mark.parametrize("fmt", ["dc", "tensors"])
def test_a_file_that_needs_pickle_is_refused_in_one_line(tmp_path, fmt):
    if fmt == "dc":
        src = tmp_path / "res.pt"
        torch.save({"data": [[Custom(), torch.zeros(6)]]}, src)
    else:
        src = tmp_path / "set.npz"
        np.savez(src, images=np.array([Custom()], dtype=object), labels=np.zeros(1))
    with pytest.raises(RddError) as err:
        import_(src, tmp_path / "set", fmt)
    message = str(err.value)
    assert "needs pickle" in message and "never unpickles" in message and "--format tensors" in message
    assert "\n" not in message and not (tmp_path / "set").exists()
    assert fmt != "dc" or "Custom" in message  # the class it would have to build is named


def test_a_file_that_is_no_torch_file_is_not_mistaken_for_pickle(tmp_path):
    (tmp_path / "res.pt").write_bytes(b"not a torch file")
    with pytest.raises(RddError, match="not a file torch.save wrote") as err:
        import_(tmp_path / "res.pt", tmp_path / "set", "dc")
    assert "pickle" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("images, labels, message", [
    (torch.rand(6, 1, 4, 4), torch.arange(3).repeat_interleave(2),
     "does not fit dataset 'synthetic': image size 4x4 vs 8x8"),
    (torch.rand(6, 3, 8, 8), torch.arange(3).repeat_interleave(2), "3 channels vs 1"),
    (torch.rand(8, 1, 8, 8), torch.arange(4).repeat_interleave(2), "labels run from 0 to 3 .* has 3 classes"),
    (torch.rand(4, 1, 8, 8), torch.tensor([0, 0, 1, 1]), "images of 2 of the 3 classes of dataset 'synthetic'"),
    (torch.rand(6, 1, 8, 8), torch.tensor([0, 0, 1, 1, 2]), "6 images but 5 labels"),
    (torch.rand(6, 1, 8, 8), torch.tensor([0.0, 0.5, 1, 1, 2, 2]), "whole class numbers"),
])
def test_a_set_that_does_not_fit_the_dataset_is_a_one_line_error(tmp_path, images, labels, message):
    save_file({"images": images, "labels": labels}, tmp_path / "set.safetensors")
    with pytest.raises(RddError, match=message) as err:
        import_(tmp_path / "set.safetensors", tmp_path / "set", "tensors")
    assert "\n" not in str(err.value) and not (tmp_path / "set").exists()


def test_unknown_formats_and_options_fail_before_anything_is_read(tmp_path):
    src = tmp_path / "res.pt"
    src.write_bytes(b"not read")
    with pytest.raises(UnknownNameError) as err:
        import_(src, tmp_path / "set", "nope")
    assert "unknown set format 'nope'; known: dc, folder, mtt, sre2l, tensors" in str(err.value)
    with pytest.raises(RddError, match="set format 'mtt'.*index"):
        import_(src, tmp_path / "set", "mtt", index=1)
    with pytest.raises(RddError, match="set format 'dc' parameter index must be an integer"):
        import_(src, tmp_path / "set", "dc", index="one")
    assert not (tmp_path / "set").exists()


class JsonDump:
    """An outside format, registered as any plugin registers one."""

    @hookimpl
    def rdd_register_set_formats(self, register):
        def read(source, dataset, *, scale: float = 1.0):
            rows = json.loads(source.read_text())
            return ReadSet(torch.tensor(rows["images"]) * scale, torch.tensor(rows["labels"]), [source],
                           converted=[f"scaled by {scale}"], extra={"tool": "json-dump"})

        register("json-dump", read, "images and labels as JSON lists")


def test_an_outside_format_plugin_is_used(tmp_path):
    plugins.register_plugin(JsonDump(), name="json-format")
    images, labels = pixels()
    src = tmp_path / "set.json"
    src.write_text(json.dumps({"images": (images * 2).tolist(), "labels": labels.tolist()}))
    import_(src, tmp_path / "set", "json-dump", scale=0.5)
    loaded = load_distilled(tmp_path / "set")
    assert torch.allclose(loaded.images, images) and loaded.meta["distiller"] == "json-dump"
    imported = loaded.meta["imported"]
    assert imported["plugin"] == "json-format" and imported["tool"] == "json-dump"
    assert imported["converted"] == ["scaled by 0.5"] and imported["options"] == {"scale": 0.5}


def test_cli_import_writes_a_set_and_reports_errors_in_one_line(tmp_path, capsys):
    images, labels = pixels(low=-0.85, high=2.25)
    src = tmp_path / "res.pt"
    torch.save({"data": [[normalized(images), labels]], "accs_all_exps": {}}, src)
    args = ["import", str(src), "--format", "dc", "--dataset", "synthetic",
            "--set", "data.params={num_classes = 3, image_size = 8, per_class = 5}"]
    assert main([*args, "--out", str(tmp_path / "set"), "--index", "0", "--clip"]) == 0
    printed = capsys.readouterr().out
    assert "imported 6 images (dc, synthetic, ipc 2; pixel range [-0.85, 2.25], clipped to [0, 1])" in printed
    assert float(load_distilled(tmp_path / "set").images.max()) <= 1.0
    for extra, message in ((["--out", str(tmp_path / "set")], "already holds a distilled set"),
                           (["--out", str(tmp_path / "z"), "--set", "zca=true"], "set format 'dc'"),
                           (["--out", str(tmp_path / "z"), "--set", "data.root=x"], "data.params"),
                           (["--out", str(tmp_path / "z"), "--normalized"], "normalized")):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    path = tmp_path / "set.npz"
    np.savez(path, images=normalized(images).numpy(), labels=labels.numpy())
    assert main(["import", str(path), "--format", "tensors", "--dataset", "synthetic", "--normalized",
                 "--set", "data.params.num_classes=3", "--set", "data.params.image_size=8",
                 "--out", str(tmp_path / "npz")]) == 0
    assert torch.allclose(load_distilled(tmp_path / "npz").images, images, atol=1e-5)


def test_float_images_on_the_0_255_scale_are_refused(tmp_path):
    import numpy as np

    images = np.random.default_rng(0).random((6, 1, 8, 8)).astype(np.float32) * 255
    np.savez(tmp_path / "scaled.npz", images=images, labels=np.array([0, 1, 2] * 2))
    with pytest.raises(RddError, match="0-255 scale"):
        rdd_plugins.import_set(tmp_path / "scaled.npz", format="tensors", dataset="synthetic",
                               dataset_params={"num_classes": 3, "image_size": 8, "per_class": 12},
                               out=tmp_path / "set")
    assert not (tmp_path / "set").exists()
