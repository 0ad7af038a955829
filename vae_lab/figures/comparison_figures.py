"""The side-by-side figures of `vae_lab.compare`: runs lined up on a grid by the keys that tell them apart
(rows one key, columns another: loss x seed, model x latent_dim), their latent codes on one scale with
the prior, their samples, their aggregate posteriors, and the evidence metrics against a swept size."""

import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

from vae_lab.errors import VaeLabError
from vae_lab.evaluation import inference, latent_holes, metrics
from vae_lab.figures import plots, side_by_side
from vae_lab.figures.run_figures import RunFigureTensors, figure_tensors
from vae_lab.figures.side_by_side import Panel
from vae_lab.labels import grid, label
from vae_lab.models import reparameterise
from vae_lab.rate_distortion import BETA_KEYS
from vae_lab.runs import load_run
from vae_lab.training.run_folder import read_metrics

log = logging.getLogger("vae_lab.compare")
SAMPLES = 100  # prior draws per run: enough to show how many classes they cover
DENSITY_CODES = 10_000  # test images whose posteriors make the aggregate-posterior map (MNIST: all)
# the evidence metrics drawn against a swept size: summary key (flattened with _) -> axis name
EVIDENCE = {
    "metrics_prior_samples_coverage": "coverage",
    "metrics_prior_samples_coverage_lowest_class": "lowest class coverage",
    "metrics_prior_samples_frechet_distance": "Frechet distance",
    "metrics_iwae_nll_k100": "IWAE NLL, K=100 (nats)",
    "metrics_latent_holes_prior_hole_mass": "prior mass in holes (held out)",
}
# an autoencoder's draws from the Gaussian fitted to its codes, drawn as a line of their own
FITTED = {
    "metrics_prior_samples_coverage": "metrics_fitted_gaussian_samples_coverage",
    "metrics_prior_samples_coverage_lowest_class": "metrics_fitted_gaussian_samples_coverage_lowest_class",
    "metrics_prior_samples_frechet_distance": "metrics_fitted_gaussian_samples_frechet_distance",
    "metrics_latent_holes_prior_hole_mass": "metrics_latent_holes_fitted_gaussian_hole_mass",
}


@dataclass
class RunTensors:
    """What the comparison figures show of one run."""

    figures: RunFigureTensors  # its own figures' tensors: reconstructions, prior samples, manifold
    latent_points: np.ndarray  # (N, 2): z1, z2 of one draw z ~ q(z|x) per test image, or the code
    density: dict | None  # latent_holes.aggregate_posterior_map, for a 2-d latent


def run_tensors(model, data) -> RunTensors:
    """Give back the tensors of one run's comparison panels, from fixed seeds."""
    figures = figure_tensors(model, data, seed=0, samples=SAMPLES)
    mean, log_var, points = figures.test_codes, None, figures.test_codes
    if model.is_variational:  # the posteriors' spread, not only their means: one draw per test image
        mean, log_var = inference.encode_posteriors(model, data.test_images)
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0)).to(mean.device)
        points = reparameterise(mean, log_var, noise)
    points = points.detach().cpu().float()
    if points.shape[1] == 1:
        points = torch.cat([points, torch.zeros_like(points)], 1)
    density = None
    if mean.shape[1] == 2:
        chosen = metrics.stratified_subset(data.test_labels.cpu(), min(DENSITY_CODES, len(mean)))
        density = latent_holes.aggregate_posterior_map(
            mean.cpu()[chosen], None if log_var is None else log_var.cpu()[chosen]
        )
    return RunTensors(figures=figures, latent_points=points[:, :2].numpy(), density=density)


def _test_data(run, data_root: str | None, cache: dict):
    data_cfg = run.config.data.copy()
    data_cfg.limit = None  # figures always use the whole test split
    if data_root:
        data_cfg.root = data_root
    key = json.dumps({k: str(v) for k, v in data_cfg.items()}, sort_keys=True)
    if key not in cache:
        cache[key] = instantiate(data_cfg)
    return cache[key]


def draw_comparisons(
    rows, keys: list[str], out: Path, data_root: str | None, device: str, own_axes: bool = False
) -> list[Path]:
    """Draw the side-by-side figures of the completed runs (compare's RunRows), lined up by `keys`;
    give back the files written. own_axes: each latent panel on its own axes instead of shared ones."""
    completed = [row for row in rows if row.status == "completed"]
    written = _draw_curves(rows, keys, out) + draw_evidence_against_keys(completed, keys, out)
    rows_at, columns_at, cells, fixed = grid([row.settings for row in completed], keys)
    loaded, cache = {}, {}
    for (row_value, column_value), index in cells.items():
        row = completed[index]
        try:
            run = load_run(row.path, device=device)
            data = _test_data(run, data_root, cache).to(torch.device(device))
        except VaeLabError as error:
            log.warning(f"figures skip {row.name}: {error}")
            continue
        place = (rows_at.index(row_value), columns_at.index(column_value))
        loaded[place] = (label(row.settings, keys[:2]) or row.name, run_tensors(run.model, data), data)
    if not loaded:
        return written
    return written + _draw_panels(loaded, fixed, out, own_axes)


def _draw_panels(loaded: dict, fixed: dict[str, str], out: Path, own_axes: bool) -> list[Path]:
    """The grid figures of the loaded runs: {(row, column): (title, RunTensors, data)}."""
    note = (" (" + ", ".join(f"{k}={v}" for k, v in fixed.items()) + ")") if fixed else ""
    first = next(iter(loaded.values()))
    labels = first[2].test_labels.cpu().numpy()
    class_names = first[2].class_names

    def panels(content_of):
        return [
            Panel(row, column, title, content_of(tensors))
            for (row, column), (title, tensors, _) in sorted(loaded.items())
            if content_of(tensors) is not None
        ]

    what = "test codes: one draw z ~ q(z|x) per test image (VAE), the code (autoencoder); z1, z2" + note
    written = [
        plots.save_figure(
            side_by_side.latent_grid_figure(
                panels(lambda t: t.latent_points), labels, class_names, not own_axes, what
            ),
            out / "latent_comparison.png",
        ),
        plots.save_figure(
            side_by_side.sample_grid_figure(
                panels(lambda t: t.figures.samples.cpu()), f"{SAMPLES} decoded draws from N(0, I){note}"
            ),
            out / "samples_comparison.png",
        ),
    ]
    ordered = [loaded[place] for place in sorted(loaded)]
    test_inputs = first[1].figures.test_inputs.cpu()
    rows = [
        ("test input", test_inputs),
        *((title, t.figures.reconstructions.cpu()) for title, t, _ in ordered),
    ]
    written.append(
        side_by_side.plot_image_rows(
            rows, out / "reconstructions_comparison.png", "reconstructions of test images"
        )
    )
    densities = panels(lambda t: t.density)
    if densities:
        written.append(
            plots.save_figure(side_by_side.density_grid_figure(densities), out / "aggregate_posterior.png")
        )
    manifolds = [
        (title, t.figures.manifold.cpu()) for title, t, _ in ordered if t.figures.manifold is not None
    ]
    if manifolds:
        values = next(t.figures.manifold_values for _, t, _ in ordered if t.figures.manifold is not None)
        path = out / "manifold_comparison.png"
        written.append(side_by_side.plot_manifold_comparison(manifolds, values, path))
    return written


def _draw_curves(rows, keys: list[str], out: Path) -> list[Path]:
    curves = [
        (
            label(row.settings, keys) or row.name,
            [m["epoch"] for m in ms],
            {p: [m["test"][p] for m in ms] for p in ("total", "recon", "kl")},
        )
        for row in rows
        if (ms := read_metrics(row.path))
    ]
    return [side_by_side.plot_curves(curves, out / "curves.png")] if curves else []


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def draw_evidence_against_keys(completed, keys: list[str], out: Path) -> list[Path]:
    """For each numeric key that names runs (but the seed, and the loss weights: their beta has figures
    of its own, vae_lab/figures/rate_distortion.py): the test loss and the evidence metrics
    against it, one line per setting of the other naming keys, mean and a ±sd band over the seeds; an
    autoencoder's draws from the Gaussian fitted to its codes as a line of their own."""
    written = []
    for key in keys:
        if key in ("seed", *BETA_KEYS) or any(_as_number(r.settings.get(key, "")) is None for r in completed):
            continue
        others = [k for k in keys if k not in (key, "seed")]
        lines = {}
        for metric in ["test_total", *EVIDENCE]:
            by_line = _points_by_line(completed, key, others, metric)
            if metric in FITTED:
                by_line |= {
                    f"{name}, fitted Gaussian": points
                    for name, points in _points_by_line(completed, key, others, FITTED[metric]).items()
                }
            if by_line:
                lines[EVIDENCE.get(metric, "test loss (nats)")] = {
                    name: _mean_and_sd(points) for name, points in by_line.items()
                }
        if lines:
            written.append(side_by_side.plot_metric_against_key(key, lines, out / f"metrics_vs_{key}.png"))
    return written


def _points_by_line(completed, key: str, others: list[str], metric: str) -> dict[str, dict]:
    by_line: dict[str, dict[float, list[float]]] = {}
    for row in completed:
        value = row.metrics.get(metric)
        if value is not None:
            points = by_line.setdefault(label(row.settings, others), {})
            points.setdefault(_as_number(row.settings[key]), []).append(value)
    return by_line


def _mean_and_sd(points: dict[float, list[float]]) -> tuple[list, list, list]:
    xs = sorted(points)
    means = [statistics.fmean(points[x]) for x in xs]
    sds = [statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in xs]
    return xs, means, sds
