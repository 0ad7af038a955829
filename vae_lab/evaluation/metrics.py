"""Every metric of a trained model's likelihood and latent space, as a pure function of tensors
(callable from a notebook); the sample metrics are in sample_quality.py, the exact likelihood of a
2-d latent in exact_likelihood.py, the aggregate posterior's holes in latent_holes.py.

Units: nats per image for likelihoods; shares in [0, 1]. Each function names its paper.
"""

import math

import torch

from vae_lab.evaluation.latent_holes import mixture_log_density
from vae_lab.losses import (  # noqa: F401  (log densities and weights: metrics.<name> as ever)
    binary_entropy_nats_per_image,
    gaussian_kl_terms,
    gaussian_log_density,
    importance_log_weights,
    log_mean_exp,
)


def binary_entropy_floor_nats(images: torch.Tensor) -> float:
    """Give back the mean over images of sum_pixels H(x): the lowest BCE any model can reach on them.

    BCE(x, p) = H(x) + KL(Bernoulli(x) || Bernoulli(p)) >= H(x), with equality at p = x; on grayscale
    pixels H(x) > 0, so BCE there is not a normalised likelihood and its floor is above zero.
    """
    return binary_entropy_nats_per_image(images).mean().item()


def iwae_bounds(log_weights: torch.Tensor, ks: tuple[int, ...] = (1, 10, 100)) -> dict[int, float]:
    """Give back {K: mean over images of log-mean-exp of the first K log weights}: nested IWAE bounds.

    log_weights (K_max, B) = log p(x|z_k) + log p(z_k) - log q(z_k|x) for z_k ~ q(z|x) (Burda et al.
    2016). Each bound is <= log p(x) and does not decrease with K; K = 1 is the ELBO.
    """
    return {k: log_mean_exp(log_weights[:k], 0).mean().item() for k in ks if k <= len(log_weights)}


def kl_per_dimension(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Give back the mean over images of KL(q(z_d|x) || N(0, 1)) for each latent dimension d: (D,)."""
    return (-0.5 * gaussian_kl_terms(mean, log_var)).mean(0)


def active_units(mean: torch.Tensor, threshold: float = 0.01) -> int:
    """Give back how many dimensions have Var_x[E_q(z|x)[z_d]] above threshold (Burda et al. 2016)."""
    return int((mean.var(0) > threshold).sum().item())


def mutual_information(mean: torch.Tensor, log_var: torch.Tensor, z: torch.Tensor) -> float:
    """Give back an estimate of I(x; z) under q(z|x) and the data (Hoffman and Johnson 2016).

    I = E_x E_q(z|x)[log q(z|x) - log q(z)], with the aggregate posterior q(z) taken as the mixture
    of the N given posteriors; z (N, D) holds one draw from each. The estimate is at most log N.
    """
    log_q_own = gaussian_log_density(z, mean, log_var)  # (N,)
    log_q_pairs = gaussian_log_density(
        z.unsqueeze(1), mean.unsqueeze(0), log_var.unsqueeze(0)
    )  # (N, N): z_i, x_j
    log_q_aggregate = log_mean_exp(log_q_pairs, 1)
    return (log_q_own - log_q_aggregate).mean().item()


def knn_accuracy(
    train_codes: torch.Tensor,
    train_labels: torch.Tensor,
    test_codes: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 5,
    chunk: int = 1000,
) -> float | None:
    """Give back the share of test codes whose k nearest training codes (Euclidean) vote their label;
    None where there are fewer than k training codes (no k nearest neighbours)."""
    if len(train_codes) < k:
        return None
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    correct = 0
    for start in range(0, len(test_codes), chunk):
        distances = torch.cdist(test_codes[start : start + chunk].float(), train_codes.float())
        nearest = distances.topk(k, largest=False).indices  # (chunk, k)
        votes = torch.nn.functional.one_hot(train_labels[nearest], classes).sum(1)
        correct += (votes.argmax(1) == test_labels[start : start + chunk]).sum().item()
    return correct / len(test_codes)


def majority_share(labels: torch.Tensor) -> float:
    """Give back the share of the most frequent label: the accuracy of always guessing it (chance)."""
    return (labels.bincount().max() / len(labels)).item()


def pca_fit(data: torch.Tensor, dims: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Give back (mean, components (dims, D)) of the data's principal axes."""
    data = data.flatten(1).float()
    centre = data.mean(0)
    _, _, components = torch.linalg.svd(data - centre, full_matrices=False)
    return centre, components[:dims]


def stratified_subset(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Give back the indices of the first count/C images of each class: the same subset every time."""
    classes = int(labels.max()) + 1
    per_class = max(1, count // classes)
    chosen = [torch.nonzero(labels == c).flatten()[:per_class] for c in range(classes)]
    return torch.cat(chosen).sort().values


def pixel_pca(
    pixels: torch.Tensor, dims: int = 2, exact_up_to: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Give back (centre, axes (dims, D)) of flattened pixels (N, D): the principal-axes baseline.

    Up to `exact_up_to` pixels per image, an exact SVD (MNIST's numbers); above it, torch's randomised
    PCA (Halko et al. 2011), whose two leading axes are as good for a 2-d kNN baseline.
    """
    if pixels.shape[1] <= exact_up_to:
        return pca_fit(pixels, dims)
    centre = pixels.mean(0)
    _, _, vectors = torch.pca_lowrank(pixels - centre, q=dims + 8, center=False)
    return centre, vectors[:, :dims].T


def project(pixels: torch.Tensor, centre: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """Give back flattened pixels (N, D) projected on principal axes (dims, D): (N, dims)."""
    return (pixels - centre) @ axes.T


def fitted_gaussian(codes: torch.Tensor, jitter: float = 1e-6) -> torch.distributions.MultivariateNormal:
    """Give back the Gaussian of the codes' mean and covariance (plus jitter * I, to keep it invertible)."""
    covariance = codes.T.cov() + jitter * torch.eye(codes.shape[1], dtype=codes.dtype, device=codes.device)
    return torch.distributions.MultivariateNormal(codes.mean(0), covariance_matrix=covariance)


def mutual_information_all(
    mean: torch.Tensor,
    log_var: torch.Tensor,
    generator: torch.Generator | None = None,
    chunk: int = 1000,
    z: torch.Tensor | None = None,
) -> dict:
    """Give back {"mutual_information", "mutual_information_max"}: I(x; z) over all N posteriors, with
    q(z) the mixture of the N posteriors, and its ceiling log N (Hoffman and Johnson 2016).

    The estimate of `mutual_information`, chunked (chunk x N at a time instead of N x N x D) and in
    float64: one draw z_n = mean_n + exp(log_var_n / 2) * eps_n from each posterior, eps = torch.randn(
    mean.shape, generator=generator, dtype=float64) unless z is given; then
    I = mean_n [log q(z_n|x_n) - log (1/N) sum_m q(z_n|x_m)] <= log N.
    """
    mean, log_var = mean.double().cpu(), log_var.double().cpu()
    if z is None:
        z = mean + (0.5 * log_var).exp() * torch.randn(mean.shape, generator=generator, dtype=torch.float64)
    z = z.double().cpu()
    log_own = gaussian_log_density(z, mean, log_var)
    log_aggregate = mixture_log_density(z, mean, log_var, chunk)
    return {
        "mutual_information": (log_own - log_aggregate).mean().item(),
        "mutual_information_max": math.log(len(mean)),
    }
