"""Figures that set runs side by side, one function each: one row of images per run, each run's decoded
grid, the test curves, a number against a swept key, and the comparison grids of codes, draws and
aggregate posteriors (one Panel per run, placed by the keys that tell the runs apart). Tensors in,
figures or PNG out; vae_lab/figures/comparison_figures.py gathers what they draw."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.patches
import numpy as np
import torch

from vae_lab.figures.plots import class_colours, plt, save_figure, show_image, tile


def _panel_grid(count: int, panel_size: float, max_cols: int = 4):
    cols = min(count, max_cols)
    rows = -(-count // cols)
    figure, axes = plt.subplots(rows, cols, figsize=(cols * panel_size, rows * panel_size), squeeze=False)
    for axis in axes.flat[count:]:
        axis.axis("off")
    return figure, list(axes.flat[:count])


def plot_image_rows(rows: Sequence[tuple[str, torch.Tensor]], path: Path, title: str) -> Path:
    """One labelled row of images per entry (test inputs, then each run's reconstructions or samples)."""
    count = max(len(images) for _, images in rows)
    figure, axes = plt.subplots(
        len(rows), 1, figsize=(count * 0.75 + 2.5, len(rows) * 0.9 + 0.5), squeeze=False
    )
    for axis, (name, images) in zip(axes[:, 0], rows, strict=True):
        show_image(axis, tile(images, 1, len(images)))
        axis.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    figure.suptitle(title)
    return save_figure(figure, path)


def plot_manifold_comparison(
    panels: Sequence[tuple[str, torch.Tensor]], values: np.ndarray, path: Path
) -> Path:
    """Each 2-d run's decoded grid of N(0, 1) quantiles, side by side."""
    size = len(values)
    figure, axes = _panel_grid(len(panels), 5.0)
    for axis, (title, images) in zip(axes, panels, strict=True):
        show_image(axis, tile(images, size, size))
        axis.set_title(title, fontsize=10)
    figure.suptitle(f"decoded grid, z1 and z2 from {values[0]:.2f} to {values[-1]:.2f}")
    return save_figure(figure, path)


def plot_curves(curves: Sequence[tuple[str, list[int], dict[str, list]]], path: Path) -> Path:
    """Test total, reconstruction and KL against epoch, one line per run."""
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for axis, part in zip(axes, ("total", "recon", "kl"), strict=True):
        for name, epochs, parts in curves:
            points = [(e, v) for e, v in zip(epochs, parts[part], strict=True) if v is not None]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name)
        axis.set_xlabel("epoch")
        axis.set_ylabel(f"test {part} (nats per image)")
        axis.set_title(f"test {part}")
    handles, names = axes[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="lower center", ncol=min(len(curves), 4), fontsize=8)
    figure.tight_layout(rect=(0, 0.04 + 0.04 * (len(curves) // 4), 1, 1))
    return save_figure(figure, path)


def numeric_axis(axis, ticks: list[float]) -> None:
    """A swept key's x axis: logarithmic where its values are positive (base 2 for sizes spanning less
    than a hundredfold, base 10 beyond), symmetric-log where a 0 stands below a wide span of positive
    values (a KL weight of 0, 0.03, ..., 30), linear otherwise; a tick at every value."""
    positive = [x for x in ticks if x > 0]
    if positive and len(positive) == len(ticks):
        axis.set_xscale("log", base=10 if positive[-1] / positive[0] >= 100 else 2)
    elif len(positive) >= 2 and positive[-1] / positive[0] >= 100 and min(ticks) == 0:
        axis.set_xscale("symlog", linthresh=positive[0], linscale=0.5)
    else:
        return
    axis.set_xticks(ticks, [f"{x:g}" for x in ticks])
    axis.minorticks_off()


def plot_metric_against_key(
    key: str, lines: dict[str, dict[str, tuple[list, list, list]]], path: Path
) -> Path:
    """Final test metrics against a swept numeric key: {metric: {line name: (x, mean, sd)}}, each line
    its mean with a ±sd band (over seeds), one panel per metric."""
    columns = min(len(lines), 4)
    rows = -(-len(lines) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns + 1.5, 3.4 * rows + 0.6), squeeze=False, layout="constrained"
    )
    for axis in axes.flat[len(lines) :]:
        axis.axis("off")
    colours = {
        name: plt.get_cmap("tab10")(i % 10)
        for i, name in enumerate(dict.fromkeys(name for by_line in lines.values() for name in by_line))
    }
    for axis, (metric, by_line) in zip(axes.flat, lines.items(), strict=False):
        for name, (xs, means, sds) in by_line.items():
            low = [m - s for m, s in zip(means, sds, strict=True)]
            high = [m + s for m, s in zip(means, sds, strict=True)]
            axis.plot(xs, means, marker="o", markersize=3, color=colours[name], label=name or None)
            axis.fill_between(xs, low, high, color=colours[name], alpha=0.2, linewidth=0)
        axis.set_xlabel(key, fontsize=8)
        axis.set_title(metric, fontsize=9)
        axis.tick_params(labelsize=7)
        numeric_axis(axis, sorted({x for line in by_line.values() for x in line[0]}))
    handles, names = [], []
    for axis in axes.flat[: len(lines)]:
        for handle, name in zip(*axis.get_legend_handles_labels(), strict=True):
            if name not in names:
                handles.append(handle)
                names.append(name)
    if names:
        figure.legend(handles, names, loc="outside lower center", ncol=min(len(names), 4), fontsize=8)
    figure.suptitle(f"final test metrics against {key}: mean and ±sd band over seeds", fontsize=10)
    return save_figure(figure, path)


@dataclass
class Panel:
    """One run's panel in a comparison grid: its place (row, column), its title, and what it shows."""

    row: int
    column: int
    title: str
    content: Any  # the points, images or map that the figure's function draws


def _comparison_grid(panels: Sequence[Panel], panel_size: tuple[float, float]):
    """A figure with one axis per place of the panels (empty places hidden), laid out without overlaps."""
    rows = max(panel.row for panel in panels) + 1
    columns = max(panel.column for panel in panels) + 1
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(columns * panel_size[0] + 1.6, rows * panel_size[1] + 0.8),
        squeeze=False,
        layout="constrained",
    )
    used = {(panel.row, panel.column) for panel in panels}
    for (row, column), axis in np.ndenumerate(axes):
        if (row, column) not in used:
            axis.axis("off")
    return figure, axes


def prior_circles(axis) -> None:
    """The prior N(0, I)'s 1 and 2 sigma circles, dashed."""
    for radius, style in ((1, "--"), (2, ":")):
        axis.add_patch(
            matplotlib.patches.Circle((0, 0), radius, fill=False, linestyle=style, linewidth=1, color="black")
        )


SYMLOG_FROM = 10.0  # shared axes reaching beyond this go logarithmic outside the prior's region
LINEAR_WITHIN = 3


def latent_grid_figure(
    panels: Sequence[Panel],
    labels: np.ndarray,
    class_names: Sequence[str],
    shared: bool = True,
    what: str = "test codes",
    axes_names: tuple[str, str] = ("z1", "z2"),
):
    """Give back the figure of each run's latent points (Panel.content: (N, 2) array), coloured by class,
    with the prior's 1 and 2 sigma circles; on shared, equal-aspect axes, or each panel its own."""
    figure, axes = _comparison_grid(panels, (3.4, 3.4))
    colours = class_colours(len(class_names))
    if shared:
        reach = max(np.percentile(np.abs(panel.content), 99.5) for panel in panels)
        limit = max(2.5, 1.05 * float(reach))  # the prior's 2 sigma circle always in view
    for panel in panels:
        axis, points = axes[panel.row, panel.column], panel.content
        for index, name in enumerate(class_names):
            chosen = labels == index
            axis.scatter(points[chosen, 0], points[chosen, 1], s=1, color=colours[index], label=name)
        prior_circles(axis)
        if shared:
            if limit > SYMLOG_FROM:  # codes far beyond the prior: the prior's region stays readable
                ticks = [v for v in (-1000, -100, -10, -3, 0, 3, 10, 100, 1000) if abs(v) <= limit]
                for scale_of in (axis.set_xscale, axis.set_yscale):
                    scale_of("symlog", linthresh=LINEAR_WITHIN)
                axis.set_xticks(ticks, [str(v) for v in ticks])
                axis.set_yticks(ticks, [str(v) for v in ticks])
            axis.set_xlim(-limit, limit)
            axis.set_ylim(-limit, limit)
        axis.set_aspect("equal", adjustable="datalim" if not shared else "box")
        axis.set_title(panel.title, fontsize=8)
        axis.set_xlabel(axes_names[0], fontsize=8)
        axis.set_ylabel(axes_names[1], fontsize=8)
        axis.tick_params(labelsize=7)
    handles, names = axes[panels[0].row, panels[0].column].get_legend_handles_labels()
    figure.legend(handles, names, markerscale=6, loc="outside right center", title="class", fontsize=8)
    scale = "each panel its own axes"
    if shared:
        scale = "shared axes" + (
            f", linear within ±{LINEAR_WITHIN}, logarithmic beyond" if limit > SYMLOG_FROM else ""
        )
    figure.suptitle(f"{what} ({scale}); circles: the prior's 1 and 2 sigma", fontsize=10)
    return figure


def sample_grid_figure(panels: Sequence[Panel], title: str = "decoded draws from N(0, I)"):
    """Give back the figure of each run's decoded samples (Panel.content: (100, C, H, W)) as a 10 x 10
    tile, one panel per run."""
    figure, axes = _comparison_grid(panels, (3.0, 3.1))
    for panel in panels:
        count = len(panel.content)
        cols = 10 if count >= 10 else count
        axis = axes[panel.row, panel.column]
        show_image(axis, tile(panel.content[: (count // cols) * cols], count // cols, cols))
        axis.set_title(panel.title, fontsize=8)
    figure.suptitle(title, fontsize=10)
    return figure


def density_grid_figure(panels: Sequence[Panel]):
    """Give back the figure of each 2-d run's aggregate posterior q(z) on a grid (Panel.content: a dict
    of latent_holes.aggregate_posterior_map), log q in grey, its holes shaded red, the prior's circles."""
    figure, axes = _comparison_grid(panels, (3.4, 3.6))
    for panel in panels:
        axis, found = axes[panel.row, panel.column], panel.content
        span = found["span"]
        log_q = found["log_q"].numpy()
        floor = np.percentile(log_q, 1)
        axis.imshow(np.maximum(log_q, floor), origin="lower", extent=(-span, span, -span, span), cmap="Greys")
        holes = np.ma.masked_where(~found["hole"].numpy(), np.ones_like(log_q))
        axis.imshow(holes, origin="lower", extent=(-span, span, -span, span), cmap="autumn", alpha=0.45)
        prior_circles(axis)
        mass = found["prior_mass_in_holes"]
        axis.set_title(f"{panel.title}\nprior mass in red: {mass:.2f}", fontsize=8)
        axis.set_xlabel("z1", fontsize=8)
        axis.set_ylabel("z2", fontsize=8)
        axis.tick_params(labelsize=7)
    figure.suptitle(
        "aggregate posterior q(z) of the test images, log density in grey; red: holes, where q is below "
        "its 5% level over its own draws\n(the plain reading, in sample, on this grid); circles: the "
        "prior's 1 and 2 sigma",
        fontsize=9,
    )
    return figure
