"""The figures a run gets, decided here once: training, `vae-lab-evaluate` and `compare` all call it.

The model runs once for all of them (figure_tensors, through vae_lab/evaluation/inference.py); then each
figure is drawn from those tensors by a pure function of vae_lab/figures/plots.py.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vae_lab.data import ImageData
from vae_lab.evaluation import inference
from vae_lab.evaluation.suite import Evaluation
from vae_lab.figures import plots

RECONSTRUCTED_IMAGES = 10  # test images shown over their reconstructions
ATTRIBUTE_FACES = 8  # test images without the attribute, one per row of attribute_shift.png


@dataclass
class RunFigureTensors:
    """What the article's figures of one run show, as tensors; those of an evaluated run's figures are
    None for a run that was not evaluated (and where its model or data has no such figure)."""

    test_inputs: torch.Tensor  # (10, C, H, W) in [0, 1]
    reconstructions: torch.Tensor  # (10, C, H, W) pixel probabilities
    test_codes: torch.Tensor  # (N, D): the code (posterior mean) of every test image
    samples: torch.Tensor  # decoded draws from N(0, I)
    manifold: Optional[torch.Tensor]  # (15 * 15, C, H, W) for a 2-d latent, else None
    manifold_values: Optional[np.ndarray]
    interpolations: Optional[torch.Tensor] = None  # decoded straight lines between test codes
    traversals: Optional[torch.Tensor] = None  # above 2-d: each latent dimension from -3 to 3
    traversed_dims: int = 0
    attribute_shifts: Optional[torch.Tensor] = None  # two classes: test codes + s x the attribute vector


def figure_tensors(
    model,
    data: ImageData,
    seed: int,
    samples: int = 100,
    evaluation: Optional[Evaluation] = None,
) -> RunFigureTensors:
    """Give back the tensors of a run's figures: reconstructions, test codes (the evaluation's, where
    there is one), prior samples, the manifold of a 2-d latent and, for an evaluated run,
    interpolations, traversals (above 2-d) and, for data of two classes, the attribute shift."""
    if evaluation is None:
        test_codes = inference.encode_means(model, data.test_images)
    else:
        test_codes = evaluation.test_codes
    manifold, values = inference.decode_manifold(model, size=15) if model.latent_dim == 2 else (None, None)
    tensors = RunFigureTensors(
        test_inputs=data.test_images[:RECONSTRUCTED_IMAGES] / 255,
        reconstructions=inference.reconstruct(model, data.test_images[:RECONSTRUCTED_IMAGES]),
        test_codes=test_codes,
        samples=model.sample(samples, torch.Generator().manual_seed(seed)),
        manifold=manifold,
        manifold_values=values,
    )
    if evaluation is None:
        return tensors
    tensors.interpolations = inference.interpolations(model, data.test_images, data.test_labels)
    if len(data.class_names) == 2:  # an attribute (CelebA's data.attribute) or two classes
        vector = inference.attribute_vector(test_codes, data.test_labels)
        without = torch.nonzero(data.test_labels == 0).flatten()[:ATTRIBUTE_FACES]
        tensors.attribute_shifts = inference.attribute_shifts(
            model, data.test_images[without.to(data.test_images.device)], vector
        )
    if model.latent_dim > 2:
        tensors.traversals, tensors.traversed_dims = inference.traversals(model, test_codes.mean(0))
    return tensors


def draw_run_figures(
    model,
    data: ImageData,
    run_dir: Path,
    seed: int,
    evaluation: Optional[Evaluation] = None,
) -> list[str]:
    """Draw a run's figures into run_dir; give back their file names.

    Every run: reconstructions, the latent scatter, prior samples, and the manifold of a 2-d latent.
    An evaluated run (`evaluation`, the suite's, whose test codes the figures reuse) also:
    interpolations, latent traversals (above 2-d), the class histograms of its samples (where a
    classifier judged them), and for data of two classes (an attribute) the attribute vector added to
    test images.
    """
    tensors = figure_tensors(model, data, seed, evaluation=evaluation)
    histograms = None if evaluation is None else evaluation.histograms
    return [path.name for path in draw_figures(tensors, data, type(model).__name__, run_dir, histograms)]


def draw_figures(
    tensors: RunFigureTensors, data: ImageData, name: str, run_dir: Path, histograms: Optional[dict] = None
) -> list[Path]:
    """Draw each figure that `tensors` hold into run_dir, in the order summary.json lists them; give back
    their paths. `name` (the model's class) heads the titles. Longer than a screen: one short block per
    figure."""
    drawn = [
        plots.plot_reconstructions(
            tensors.test_inputs, tensors.reconstructions, run_dir / "reconstructions.png"
        ),
        plots.plot_latent_scatter(
            tensors.test_codes,
            data.test_labels,
            run_dir / "latent_scatter.png",
            data.class_names,
            title=f"{name}: test codes ({len(data.test_images)} images)",
        ),
        plots.plot_image_grid(
            tensors.samples, run_dir / "samples.png", title=f"{name}: decoded draws from N(0, I)"
        ),
    ]
    if tensors.manifold is not None:
        title = f"{name}: decoded grid of N(0, I) quantiles"
        drawn.append(
            plots.plot_manifold(tensors.manifold, tensors.manifold_values, run_dir / "manifold.png", title)
        )
    if histograms:
        drawn.append(
            plots.plot_class_histograms(histograms, data.class_names, run_dir / "class_histogram.png")
        )
    if tensors.interpolations is not None:
        title, path = "straight lines between test codes, decoded", run_dir / "interpolation.png"
        drawn.append(plots.plot_image_grid(tensors.interpolations, path, title=title))
    if tensors.attribute_shifts is not None:
        low, high = inference.ATTRIBUTE_STRENGTHS[0], inference.ATTRIBUTE_STRENGTHS[-1]
        title = f"code + s x ({data.class_names[1]} vector), s = {low:g} to {high:g}; s = 0: reconstruction"
        path, cols = run_dir / "attribute_shift.png", len(inference.ATTRIBUTE_STRENGTHS)
        drawn.append(plots.plot_image_grid(tensors.attribute_shifts, path, cols=cols, title=title))
    if tensors.traversals is not None:
        title = f"each of {tensors.traversed_dims} latent dimensions from -3 to 3 around the mean"
        path = run_dir / "traversal.png"
        drawn.append(plots.plot_image_grid(tensors.traversals, path, cols=9, title=title))
    return drawn
