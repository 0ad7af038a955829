"""The figures of one run, one function each (tensors in, PNG out), and what every figure shares: tiles,
colours, saving, the check for overlapping text. Figures that set runs side by side are in
side_by_side.py, the rate-distortion plane in rate_distortion.py. Nothing here touches a model."""

from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.text  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _as_images(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) tensor in [0, 1] -> (N, H, W) or (N, H, W, 3) array."""
    array = images.detach().cpu().float().clamp(0, 1).numpy()
    return array[:, 0] if array.shape[1] == 1 else array.transpose(0, 2, 3, 1)


def class_colours(count: int) -> list:
    """Give back one colour per class: tab10 up to 10 classes (as before), tab20 up to 20, then a spectrum."""
    if count <= 10:
        return [plt.get_cmap("tab10")(index) for index in range(count)]
    if count <= 20:
        return [plt.get_cmap("tab20")(index) for index in range(count)]
    return [plt.get_cmap("nipy_spectral")(index / (count - 1)) for index in range(count)]


def show_image(axis, image: np.ndarray) -> None:
    """Draw an image (grey or colour, in [0, 1]) on an axis without ticks."""
    axis.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
    axis.set_xticks([])
    axis.set_yticks([])


def save_figure(figure, path: Path) -> Path:
    """Write a figure (at 100 dpi, trimmed), close it and give back its path."""
    path = Path(path)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def tile(images: torch.Tensor, rows: int, cols: int) -> np.ndarray:
    """Give back one image of rows x cols tiles from (rows*cols, C, H, W)."""
    array = _as_images(images)
    height, width = array.shape[1:3]
    grid = array.reshape(rows, cols, height, width, *array.shape[3:])
    grid = grid.swapaxes(1, 2)  # (rows, H, cols, W, ...)
    return grid.reshape(rows * height, cols * width, *array.shape[3:])


def plot_reconstructions(inputs: torch.Tensor, reconstructions: torch.Tensor, path: Path) -> Path:
    """Test inputs on the top row, their reconstructions below, as in the article."""
    count = len(inputs)
    figure, axes = plt.subplots(2, count, figsize=(count * 1.0, 2.3), squeeze=False)
    for column, (image, recon) in enumerate(
        zip(_as_images(inputs), _as_images(reconstructions), strict=True)
    ):
        show_image(axes[0, column], image)
        show_image(axes[1, column], recon)
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("decoded")
    return save_figure(figure, path)


def project_2d(codes: torch.Tensor) -> tuple[np.ndarray, Optional[str]]:
    """Give back codes as (N, 2) and the projection's name: none for 1-d and 2-d, else PCA."""
    codes = codes.detach().cpu().float()
    if codes.shape[1] == 2:
        return codes.numpy(), None
    if codes.shape[1] == 1:
        return torch.cat([codes, torch.zeros_like(codes)], 1).numpy(), None
    centred = codes - codes.mean(0)
    _, _, components = torch.linalg.svd(centred, full_matrices=False)
    points = centred @ components[:2].T  # (N, 2); (N, 1) when there is a single code
    points = torch.cat([points, torch.zeros(len(points), 2 - points.shape[1])], 1)
    return points.numpy(), f"PCA projection of the {codes.shape[1]}-d codes"


def plot_latent_scatter(
    codes: torch.Tensor,
    labels: torch.Tensor,
    path: Path,
    class_names: Sequence[str],
    title: str = "latent codes of the test set",
) -> Path:
    """The test codes coloured by class, with a legend; codes of more than 2 dims go through PCA."""
    points, projection = project_2d(codes)
    labels = labels.detach().cpu().numpy()
    figure, axis = plt.subplots(figsize=(7, 6))
    colours = class_colours(len(class_names))
    for index, name in enumerate(class_names):
        chosen = labels == index
        axis.scatter(points[chosen, 0], points[chosen, 1], s=2, color=colours[index], label=name)
    axis.set_xlabel("PC1" if projection else "z1")
    axis.set_ylabel("PC2" if projection else "z2")
    axis.set_title(f"{title}\n({projection})" if projection else title)
    axis.legend(markerscale=5, loc="center left", bbox_to_anchor=(1.0, 0.5), title="class")
    return save_figure(figure, path)


def plot_image_grid(images: torch.Tensor, path: Path, cols: int = 10, title: Optional[str] = None) -> Path:
    """A grid of images without axes (used for prior samples)."""
    rows = len(images) // cols
    figure, axis = plt.subplots(figsize=(cols * 0.8, rows * 0.8 + (0.4 if title else 0)))
    show_image(axis, tile(images[: rows * cols], rows, cols))
    if title:
        axis.set_title(title)
    return save_figure(figure, path)


def plot_manifold(images: torch.Tensor, values: np.ndarray, path: Path, title: str) -> Path:
    """The decoded 2-d grid, with the z values of its rows and columns as axis ticks."""
    size = len(values)
    height, width = images.shape[-2:]
    figure, axis = plt.subplots(figsize=(9, 9))
    axis.imshow(tile(images, size, size), cmap="gray" if images.shape[1] == 1 else None, vmin=0, vmax=1)
    axis.set_xticks(
        np.arange(size) * width + width / 2, [f"{v + 0.0:.2f}" for v in values.round(2)], rotation=90
    )
    axis.set_yticks(np.arange(size) * height + height / 2, [f"{v + 0.0:.2f}" for v in values[::-1].round(2)])
    axis.set_xlabel("z1")
    axis.set_ylabel("z2")
    axis.set_title(title)
    return save_figure(figure, path)


def plot_class_histograms(
    histograms: dict[str, torch.Tensor], class_names: Sequence[str], path: Path
) -> Path:
    """The classifier's predicted-class shares of decoded samples, one bar group per sampling scheme."""
    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(histograms)
    positions = np.arange(len(class_names))
    for index, (name, shares) in enumerate(histograms.items()):
        axis.bar(positions + index * width, shares.cpu().numpy(), width, label=name)
    axis.axhline(1 / len(class_names), color="grey", linestyle="--", linewidth=1, label="uniform")
    long_names = max(len(name) for name in class_names) > 3  # Fashion-MNIST's, an image folder's
    axis.set_xticks(
        positions + width * (len(histograms) - 1) / 2,
        class_names,
        rotation=30 if long_names else 0,
        ha="right" if long_names else "center",
    )
    axis.set_xlabel("predicted class")
    axis.set_ylabel("share of decoded samples")
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def overlapping_texts(figure) -> list[tuple[str, str]]:
    """Give back the pairs of texts drawn on a figure (its titles, the axes' titles, labels and tick
    labels in view, the legend's entries) whose boxes overlap: a figure that reads cleanly has none."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    texts = [figure._suptitle, *figure.texts, *(t for legend in figure.legends for t in legend.get_texts())]
    for axis in figure.axes:
        if not axis.get_visible() or not axis.axison:
            continue
        texts += [axis.title, axis.xaxis.label, axis.yaxis.label]
        for ticks, (low, high) in ((axis.xaxis, axis.get_xlim()), (axis.yaxis, axis.get_ylim())):
            low, high = min(low, high), max(low, high)
            texts += [tick.label1 for tick in ticks.get_major_ticks() if low <= tick.get_loc() <= high]
    texts = list({id(text): text for text in texts if text is not None}.values())  # each text once
    boxes = [
        (text.get_text(), text.get_window_extent(renderer))
        for text in texts
        if text.get_visible() and text.get_text().strip()
    ]
    return [
        (first, second)
        for index, (first, box) in enumerate(boxes)
        for second, other in boxes[index + 1 :]
        if box.overlaps(other)
    ]
