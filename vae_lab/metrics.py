"""Every metric of a trained model, as a pure function of tensors (callable from a notebook).

Units: nats per image for likelihoods; shares in [0, 1]. Each function names its paper.
"""

import math

import torch


def binary_entropy_floor_nats(images: torch.Tensor) -> float:
    """Give back the mean over images of sum_pixels H(x): the lowest BCE any model can reach on them.

    BCE(x, p) = H(x) + KL(Bernoulli(x) || Bernoulli(p)) >= H(x), with equality at p = x; on grayscale
    pixels H(x) > 0, so BCE there is not a normalised likelihood and its floor is above zero.
    """
    x = images.flatten(1).double().clamp(0, 1)
    entropy = -(torch.special.xlogy(x, x) + torch.special.xlogy(1 - x, 1 - x))
    return entropy.sum(1).mean().item()


def log_mean_exp(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.logsumexp(values, dim) - math.log(values.shape[dim])


def iwae_bounds(log_weights: torch.Tensor, ks: tuple[int, ...] = (1, 10, 100)) -> dict[int, float]:
    """Give back {K: mean over images of log-mean-exp of the first K log weights}: nested IWAE bounds.

    log_weights (K_max, B) = log p(x|z_k) + log p(z_k) - log q(z_k|x) for z_k ~ q(z|x) (Burda et al.
    2016). Each bound is <= log p(x) and does not decrease with K; K = 1 is the ELBO.
    """
    return {k: log_mean_exp(log_weights[:k], 0).mean().item() for k in ks if k <= len(log_weights)}


def kl_per_dimension(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Give back the mean over images of KL(q(z_d|x) || N(0, 1)) for each latent dimension d: (D,)."""
    return (-0.5 * (1 + log_var - mean.pow(2) - log_var.exp())).mean(0)


def active_units(mean: torch.Tensor, threshold: float = 0.01) -> int:
    """Give back how many dimensions have Var_x[E_q(z|x)[z_d]] above threshold (Burda et al. 2016)."""
    return int((mean.var(0) > threshold).sum().item())


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(log_var))) summed over the last dimension."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (z - mean).pow(2) / log_var.exp()).sum(-1)


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
) -> float:
    """Give back the share of test codes whose k nearest training codes (Euclidean) vote their label."""
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


def class_histogram(probabilities: torch.Tensor) -> torch.Tensor:
    """Give back the share of samples predicted as each class: (C,)."""
    counts = probabilities.argmax(1).bincount(minlength=probabilities.shape[1])
    return counts.double() / len(probabilities)


def prior_sample_scores(probabilities: torch.Tensor, confident: float = 0.9) -> dict[str, float]:
    """Give back how recognisable and how varied decoded samples are, from a classifier's p(y|x).

    - recognised_share: share with max p(y|x) >= `confident`; mean_confidence: mean of max p(y|x);
    - class_entropy_share: entropy of the predicted-class histogram / log C (1: every class alike);
    - classes_covered: classes predicted for at least 1% of the samples;
    - inception_score: exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016), at most C.
    """
    probabilities = probabilities.double()
    top = probabilities.max(1).values
    histogram = class_histogram(probabilities)
    classes = probabilities.shape[1]
    entropy = -torch.special.xlogy(histogram, histogram).sum().item()
    marginal = probabilities.mean(0)
    kl = (
        torch.special.xlogy(probabilities, probabilities) - torch.special.xlogy(probabilities, marginal)
    ).sum(1)
    return {
        "recognised_share": (top >= confident).double().mean().item(),
        "mean_confidence": top.mean().item(),
        "class_entropy_share": entropy / math.log(classes),
        "classes_covered": int((histogram >= 0.01).sum().item()),
        "inception_score": math.exp(kl.mean().item()),
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
