"""The distilled-image grid of the report: class names stay inside the figure at any IPC."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from rdd_plugins.evaluation.report import image_grid_figure, plot_image_grid  # noqa: E402

FASHION_MNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]


def grid_of(ipc, classes=FASHION_MNIST, title=""):
    k = len(classes)
    images = torch.rand(k * ipc, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(k).repeat_interleave(ipc)
    return image_grid_figure(images, labels, classes, title)


def texts_outside(fig):
    """The texts of ``fig`` whose drawn bounding box leaves the figure (in pixels)."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()  # lays the axes out (aspect) as saving would
    renderer = fig.canvas.get_renderer()
    figure_box = fig.bbox
    outside = []
    for text in fig.findobj(matplotlib.text.Text):
        if not text.get_text() or not text.get_visible():
            continue
        box = text.get_window_extent(renderer)
        if box.x0 < figure_box.x0 or box.y0 < figure_box.y0 or box.x1 > figure_box.x1 or box.y1 > figure_box.y1:
            outside.append((text.get_text(), box.bounds))
    plt.close(fig)
    return outside


@pytest.mark.parametrize("ipc", [1, 2, 10])
def test_every_class_name_lies_inside_the_figure(ipc):
    fig = grid_of(ipc)
    labels = [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_text()]
    assert set(FASHION_MNIST) <= set(labels)
    assert texts_outside(fig) == []


def test_a_long_title_over_one_column_stays_inside_the_figure():
    assert texts_outside(grid_of(1, title="sre2l+curvature-ipc1-convnet on fashion-mnist")) == []


def test_plot_image_grid_writes_the_png(tmp_path):
    images = torch.rand(4, 3, 8, 8)
    path = tmp_path / "grid.png"
    plot_image_grid(images, torch.tensor([0, 0, 1, 1]), ["airplane", "automobile"], path, "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
