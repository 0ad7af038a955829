"""The figures a run gets, decided here once: training, `vae-lab-evaluate` and `compare` all call it.

Each figure is drawn by a pure function of vae_lab/figures/plots.py; this module computes their tensors.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vae_lab.data import ImageData
from vae_lab.evaluation import inference
from vae_lab.figures import plots

RECONSTRUCTED_IMAGES = 10  # test images shown over their reconstructions


@dataclass
class RunFigureTensors:
    """What the article's figures of one run show, as tensors."""

    test_inputs: torch.Tensor  # (10, C, H, W) in [0, 1]
    reconstructions: torch.Tensor  # (10, C, H, W) pixel probabilities
    test_codes: torch.Tensor  # (N, D): the code (posterior mean) of every test image
    samples: torch.Tensor  # decoded draws from N(0, I)
    manifold: Optional[torch.Tensor]  # (15 * 15, C, H, W) for a 2-d latent, else None
    manifold_values: Optional[np.ndarray]


def figure_tensors(model, data: ImageData, seed: int, samples: int = 100) -> RunFigureTensors:
    """Give back the tensors of a run's figures: reconstructions, test codes, prior samples, manifold."""
    manifold, values = inference.decode_manifold(model, size=15) if model.latent_dim == 2 else (None, None)
    return RunFigureTensors(
        test_inputs=data.test_images[:RECONSTRUCTED_IMAGES] / 255,
        reconstructions=inference.reconstruct(model, data.test_images[:RECONSTRUCTED_IMAGES]),
        test_codes=inference.encode_means(model, data.test_images),
        samples=model.sample(samples, torch.Generator().manual_seed(seed)),
        manifold=manifold,
        manifold_values=values,
    )


def draw_run_figures(
    model,
    data: ImageData,
    run_dir: Path,
    seed: int,
    evaluated: bool = False,
    histograms: Optional[dict[str, torch.Tensor]] = None,
) -> list[str]:
    """Draw a run's figures into run_dir; give back their file names.

    Every run: reconstructions, the latent scatter, prior samples, and the manifold of a 2-d latent.
    An evaluated run also: interpolations, latent traversals (above 2-d), the class histograms of
    its samples (`histograms`, from the evaluation, where a classifier judged them), and for data of
    two classes (an attribute) the attribute vector added to test images.
    Longer than a screen: one short block per figure, in the order summary.json lists them.
    """
    name = type(model).__name__
    tensors = figure_tensors(model, data, seed)
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
    if evaluated:
        drawn.append(
            plots.plot_image_grid(
                inference.interpolations(model, data.test_images, data.test_labels),
                run_dir / "interpolation.png",
                title="straight lines between test codes, decoded",
            )
        )
    if evaluated and len(data.class_names) == 2:  # an attribute (CelebA's data.attribute) or two classes
        drawn.append(draw_attribute_shift(model, data, tensors.test_codes, run_dir))
    if evaluated and model.latent_dim > 2:
        images, dims = inference.traversals(model, tensors.test_codes.mean(0))
        title = f"each of {dims} latent dimensions from -3 to 3 around the mean"
        drawn.append(plots.plot_image_grid(images, run_dir / "traversal.png", cols=9, title=title))
    return [path.name for path in drawn]


ATTRIBUTE_FACES = 8  # test images without the attribute, one per row of attribute_shift.png


def draw_attribute_shift(model, data: ImageData, test_codes: torch.Tensor, run_dir: Path) -> Path:
    """attribute_shift.png: test images without the attribute (rows), decoded after adding s times the
    attribute vector of the test codes (columns, s from inference.ATTRIBUTE_STRENGTHS)."""
    vector = inference.attribute_vector(test_codes, data.test_labels)
    without = torch.nonzero(data.test_labels == 0).flatten()[:ATTRIBUTE_FACES].to(data.test_images.device)
    images = inference.attribute_shifts(model, data.test_images[without], vector)
    low, high = inference.ATTRIBUTE_STRENGTHS[0], inference.ATTRIBUTE_STRENGTHS[-1]
    title = f"code + s x ({data.class_names[1]} vector), s = {low:g} to {high:g}; s = 0: reconstruction"
    return plots.plot_image_grid(
        images, run_dir / "attribute_shift.png", cols=len(inference.ATTRIBUTE_STRENGTHS), title=title
    )
