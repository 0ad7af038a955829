"""How real decoded samples look and how much of the data they cover: each a pure function of a classifier's
features and predictions (callable from a notebook), with its paper.

Every metric here passes the fooling battery (vae_lab/evaluation/fooling_battery.py, tests/
test_fooling_battery.py): real digits score better than blank, grey, noisy, mean, blurred, dimmed and
shifted images, and the diversity metrics score collapsed sets far below real digits. Metrics that failed
it (the classifier's confidence, the inception score, the class histogram's entropy, classes predicted, a
pixel-distance realism check) are not computed; density is kept for comparison with the literature and
left out of the tables (docs/metrics.md has the measured scores).
"""

import math

import torch


def _chunked_distances(queries: torch.Tensor, references: torch.Tensor, chunk: int):
    """Yield (start, Euclidean distances of queries[start:start + chunk] to every reference)."""
    for start in range(0, len(queries), chunk):
        yield start, torch.cdist(queries[start : start + chunk], references)


def density_coverage(
    real_features: torch.Tensor,
    fake_features: torch.Tensor,
    k: int = 5,
    chunk: int = 1000,
    kept_radii_quantile: float = 0.5,
) -> dict:
    """Give back {"density", "coverage", "covered" (N,) bool, "precision"}: Naeem et al. 2020, "Reliable
    Fidelity and Diversity Metrics for Generative Models" (ICML).

    Real X_1..X_N, fake Y_1..Y_M (rows; images are flattened), Euclidean distances in float64. The radius
    r_i of a real point is its distance to its k-th nearest other real point (the (k+1)-th smallest of its
    row of real-real distances, the zero self-distance included, as the authors' `prdc` takes it). Then
    density = (1/(kM)) sum_j sum_i 1[d(Y_j, X_i) < r_i] (about 1 when fakes follow the real distribution;
    above 1 where fakes crowd dense real regions), coverage = (1/N) sum_i covered_i with covered_i =
    1[some Y_j has d(Y_j, X_i) < r_i]. The inequality is strict, as in `prdc` 0.2 (the paper writes <=;
    the two differ only on exact ties). For two samples of one distribution, E[coverage] =
    1 - prod_{i=1..k} (N - i) / (N + M - i) (about 1 - 2^-k for N = M). The distance blocks are at most
    `chunk` real rows at a time.

    precision: the share of fakes inside at least one real ball (Kynkaanniemi et al. 2019, "Improved
    Precision and Recall Metric for Assessing Generative Models"), counting only the balls whose radius is
    at most the `kept_radii_quantile` (0.5) quantile of the radii, as that paper prunes them for its
    realism score: the largest balls belong to outlying real images and reach far off the data, so that
    with all of them a blank image, the mean image or dimmed digits count as real (measured on MNIST in
    the fooling battery, docs/metrics.md). Real images score about 0.5 by this construction.
    """
    real = real_features.flatten(1).double()
    fake = fake_features.flatten(1).double().to(real.device)
    radii = torch.empty(len(real), dtype=torch.float64, device=real.device)
    for start, block in _chunked_distances(real, real, chunk):
        rows = torch.arange(len(block), device=real.device)
        block[rows, rows + start] = 0.0  # the self-distance, exactly (the mm form leaves rounding)
        radii[start : start + len(block)] = block.kthvalue(k + 1, dim=1).values
    kept = radii <= torch.quantile(radii, kept_radii_quantile)
    inside_per_fake = torch.zeros(len(fake), dtype=torch.float64, device=real.device)
    inside_a_kept_ball = torch.zeros(len(fake), dtype=torch.bool, device=real.device)
    covered = torch.empty(len(real), dtype=torch.bool, device=real.device)
    for start, block in _chunked_distances(real, fake, chunk):
        inside = block < radii[start : start + len(block), None]  # (chunk, M)
        inside_per_fake += inside.sum(0)
        inside_a_kept_ball |= inside[kept[start : start + len(block)]].any(0)
        covered[start : start + len(block)] = inside.any(1)
    return {
        "density": (inside_per_fake.sum() / (k * len(fake))).item(),
        "coverage": covered.double().mean().item(),
        "covered": covered,
        "precision": inside_a_kept_ball.double().mean().item(),
    }


def per_class_coverage(covered: torch.Tensor, labels: torch.Tensor, classes) -> dict:
    """Give back {"per_class", "lowest", "highest", "lowest_class"}: coverage (Naeem et al. 2020) within
    each class of the real points, from `density_coverage`'s "covered" flags and the real points' labels.

    `classes` is the number of classes C (classes 0..C-1) or a sequence of class labels. A class with no
    real point gets nan and is left out of lowest / highest; among equal lowest shares, lowest_class is
    the first class listed.
    """
    class_ids = list(range(classes)) if isinstance(classes, int) else [int(c) for c in classes]
    covered, labels = covered.bool().cpu(), labels.cpu()
    per_class = []
    for c in class_ids:
        members = labels == c
        per_class.append(covered[members].double().mean().item() if members.any() else math.nan)
    present = [(share, c) for share, c in zip(per_class, class_ids, strict=True) if not math.isnan(share)]
    lowest, lowest_class = min(present)
    return {
        "per_class": per_class,
        "lowest": lowest,
        "highest": max(present)[0],
        "lowest_class": lowest_class,
    }


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Give back the Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    Tr((S_a S_b)^(1/2)) is taken as Tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)), the same number from symmetric
    matrices only, which stays stable when dead ReLU features make a covariance singular.
    """
    a, b = features_a.double().cpu(), features_b.double().cpu()
    cov_a, cov_b = a.T.cov(), b.T.cov()
    root_a = _psd_sqrt(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return ((a.mean(0) - b.mean(0)).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross).item()


def class_histogram(probabilities: torch.Tensor) -> torch.Tensor:
    """Give back the share of samples predicted as each class: (C,)."""
    counts = probabilities.argmax(1).bincount(minlength=probabilities.shape[1])
    return counts.double() / len(probabilities)


def score_samples(
    real_features: torch.Tensor,
    real_labels: torch.Tensor,
    classes,
    fake_features: torch.Tensor,
    k: int = 5,
) -> dict:
    """Give back the sample metrics of fakes against real images, in a classifier's feature space:
    precision (pruned balls), coverage, density, per-class coverage (lowest, highest, each class) and
    the Frechet distance (`density_coverage`, `per_class_coverage`, `frechet_distance`). With no more
    real images than k (no ball radius is defined) the ball-based metrics are None each."""
    if len(real_features) <= k:
        names = ("precision", "coverage", "density", "coverage_lowest_class", "coverage_highest_class")
        return dict.fromkeys(names) | {
            "coverage_per_class": None,
            "frechet_distance": frechet_distance(fake_features, real_features),
        }
    fidelity = density_coverage(real_features, fake_features, k)
    per_class = per_class_coverage(fidelity["covered"], real_labels, classes)
    return {
        "precision": fidelity["precision"],
        "coverage": fidelity["coverage"],
        "density": fidelity["density"],
        "coverage_lowest_class": per_class["lowest"],
        "coverage_highest_class": per_class["highest"],
        "coverage_per_class": [None if math.isnan(share) else share for share in per_class["per_class"]],
        "frechet_distance": frechet_distance(fake_features, real_features),
    }
