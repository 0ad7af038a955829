"""Image sets that a sample metric must score worse than real digits: the fooling battery.

Each set has as many images as the real set it is made from. Realism foolers are images no model
should be praised for (blank, grey, noise, the mean image, real digits blurred, dimmed or shifted,
half of them noise); collapse sets are real digits without their variety (one digit repeated, ten
digits repeated). `vae_lab.evaluation.sample_quality.score_samples` scores each set as it scores a
model's prior samples; tests/test_fooling_battery.py asserts the ranking and
experiments/fooling_battery.py writes the table of docs/metrics.md.
"""

import math

import torch
import torch.nn.functional as F

from vae_lab.data import to_float
from vae_lab.evaluation.classifier import classify
from vae_lab.evaluation.sample_quality import score_samples

REALISM_FOOLERS = (
    "all black",
    "uniform grey 0.5",
    "pixel noise",
    "mean training image",
    "blurred (sigma 1.5 px)",
    "dimmed (x 0.4)",
    "shifted 6 px",
    "half real, half noise",
)
COLLAPSE_SETS = ("one digit x 1,000", "ten digits x 100")


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Give back images (N, C, H, W) blurred by a Gaussian of standard deviation sigma pixels (zeros
    beyond the border), its kernel cut at 3 sigma."""
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    rows = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    columns = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    blurred = F.conv2d(images, rows, padding=(radius, 0), groups=channels)
    return F.conv2d(blurred, columns, padding=(0, radius), groups=channels)


def shifted(images: torch.Tensor, pixels: int) -> torch.Tensor:
    """Give back images moved `pixels` right and down, zeros filled in."""
    moved = torch.zeros_like(images)
    moved[..., pixels:, pixels:] = images[..., :-pixels, :-pixels]
    return moved


def fooler_sets(
    real: torch.Tensor, labels: torch.Tensor, train_mean: torch.Tensor, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Give back {name: float images in [0, 1], as many as `real`}: the real set first, then every
    realism fooler and collapse set made from it. real (N, C, H, W) floats with labels (N,) holding
    each of ten classes; train_mean (C, H, W) the mean training image."""
    generator = torch.Generator().manual_seed(seed)
    count = len(real)
    noise = torch.rand(real.shape, generator=generator).to(real.device)
    half = count // 2
    firsts = torch.stack([torch.nonzero(labels == c).flatten()[0] for c in range(10)])
    return {
        "real digits": real,
        "all black": torch.zeros_like(real),
        "uniform grey 0.5": torch.full_like(real, 0.5),
        "pixel noise": noise,
        "mean training image": train_mean.expand_as(real).clone(),
        "blurred (sigma 1.5 px)": gaussian_blur(real, 1.5),
        "dimmed (x 0.4)": 0.4 * real,
        "shifted 6 px": shifted(real, 6),
        "half real, half noise": torch.cat([real[:half], noise[half:]]),
        "one digit x 1,000": real[:1].expand_as(real).clone(),
        "ten digits x 100": real[firsts.repeat_interleave(math.ceil(count / 10))[:count]],
    }


def battery_scores(classifier, data, reference_images: int = 5000, set_size: int = 1000, k: int = 5) -> dict:
    """Give back {set name: sample_quality.score_samples of the set} for the digit data set `data`
    (ImageData with at least reference_images + set_size test images): the first reference_images
    test images are the real reference, the next set_size the real set every fooler is made from."""
    reference = data.test_images[:reference_images]
    reference_labels = data.test_labels[:reference_images]
    real_part = slice(reference_images, reference_images + set_size)
    real, labels = to_float(data.test_images[real_part]), data.test_labels[real_part]
    train_mean = to_float(data.train_images).mean(0)
    _, reference_features = classify(classifier, reference)
    classes = len(data.class_names)
    scores = {}
    for name, images in fooler_sets(real, labels, train_mean).items():
        _, features = classify(classifier, images)
        scores[name] = score_samples(reference_features, reference_labels, classes, features, k)
    return scores
