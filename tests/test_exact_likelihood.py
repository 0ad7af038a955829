"""The quadrature log-likelihood of a 2-d latent model against a model whose answer is known in closed
form: a linear Gaussian decoder, p(z) = N(0, I), p(x|z) = N(x; W z + b, s^2 I), so p(x) = N(x; b,
W W^T + s^2 I); and the IWAE bound of the same model above it, closing in with K."""

import math

import pytest
import torch

from vae_lab.evaluation import exact_likelihood
from vae_lab.evaluation.metrics import importance_log_weights, iwae_bounds
from vae_lab.losses import BernoulliLikelihood, gaussian_log_likelihood_matrix

VARIANCE = 0.2**2


def linear_gaussian(pixels: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(pixels, 2, generator=generator, dtype=torch.float64)
    bias = torch.randn(pixels, generator=generator, dtype=torch.float64)
    return weight, bias


def closed_form_log_px(images, weight, bias):
    covariance = weight @ weight.T + VARIANCE * torch.eye(len(bias), dtype=torch.float64)
    return torch.distributions.MultivariateNormal(bias, covariance_matrix=covariance).log_prob(images)


def samples(weight, bias, count: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(count, 2, generator=generator, dtype=torch.float64)
    noise = torch.randn(count, len(bias), generator=generator, dtype=torch.float64)
    return z @ weight.T + bias + VARIANCE**0.5 * noise


def quadrature(images, weight, bias, points: int = 201, span: float = 6.0, mean=None, covariance=None):
    grid = exact_likelihood.gaussian_grid(points, span, mean, covariance)
    means = grid.codes @ weight.T + bias  # the decoder at every grid point, once: (G, P)
    return exact_likelihood.log_marginal(
        images, grid, lambda x: gaussian_log_likelihood_matrix(x, means, VARIANCE)
    ), grid


def test_the_quadrature_matches_the_closed_form_within_a_hundredth_of_a_nat():
    weight, bias = linear_gaussian()
    images = samples(weight, bias, 500)
    (fine, coarse), grid = quadrature(images, weight, bias)
    exact = closed_form_log_px(images, weight, bias)
    # the posterior's sd is s / (singular values of W), 0.07 and 0.11: peaks that 201 points over +-6 resolve
    assert (fine - exact).abs().max() < 0.01
    summary = exact_likelihood.quadrature_summary(fine, coarse, grid)
    assert summary["resolved"] and summary["images"] == 500
    assert summary["nll"] == pytest.approx(-exact.mean().item(), abs=0.01)


def test_a_grid_too_coarse_for_the_peaks_is_reported_as_unresolved():
    weight, bias = linear_gaussian()
    images = samples(weight, bias, 200)
    (fine, coarse), grid = quadrature(images, weight, bias, points=41)
    summary = exact_likelihood.quadrature_summary(fine, coarse, grid)
    assert not summary["resolved"]
    assert summary["mean_abs_spacing_change_nats"] > 0.01
    exact = closed_form_log_px(images, weight, bias)
    assert (fine - exact).abs().mean() > 0.01  # and it is wrong: the check is not a false alarm


def test_the_grid_of_another_gaussian_integrates_against_that_gaussian():
    # p(z) = N(m, S) instead of N(0, I): p(x) = N(x; W m + b, W S W^T + s^2 I)
    weight, bias = linear_gaussian(seed=3)
    mean = torch.tensor([1.5, -0.5], dtype=torch.float64)
    covariance = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    generator = torch.Generator().manual_seed(4)
    white = torch.randn(300, 2, generator=generator, dtype=torch.float64)
    z = mean + white @ torch.linalg.cholesky(covariance).T
    images = z @ weight.T + bias + VARIANCE**0.5 * torch.randn(300, len(bias), generator=generator).double()
    (fine, _), _ = quadrature(images, weight, bias, mean=mean, covariance=covariance)
    marginal = torch.distributions.MultivariateNormal(
        weight @ mean + bias,
        covariance_matrix=weight @ covariance @ weight.T
        + VARIANCE * torch.eye(len(bias), dtype=torch.float64),
    )
    assert (fine - marginal.log_prob(images)).abs().max() < 0.01


def test_the_iwae_bound_lies_above_the_exact_nll_and_closes_in_with_k():
    weight, bias = linear_gaussian()
    images = samples(weight, bias, 400)
    exact_nll = -closed_form_log_px(images, weight, bias)
    # the true posterior's mean, with a variance 4 times too wide: a q whose bound is loose at K = 1
    precision = weight.T @ weight / VARIANCE + torch.eye(2, dtype=torch.float64)
    covariance = torch.linalg.inv(precision)
    mean = (images - bias) @ weight @ covariance.T / VARIANCE  # (N, 2)
    log_var = (4 * covariance.diagonal()).log().expand_as(mean)
    generator = torch.Generator().manual_seed(5)
    k = 1000
    z = mean + (0.5 * log_var).exp() * torch.randn(k, *mean.shape, generator=generator, dtype=torch.float64)
    decoded = z @ weight.T + bias  # (k, N, P)
    log_px_z = -((images - decoded).pow(2).sum(-1) / (2 * VARIANCE)) - 0.5 * len(bias) * math.log(
        2 * math.pi * VARIANCE
    )
    bounds = iwae_bounds(importance_log_weights(log_px_z, z, mean, log_var), (1, 10, 100, 1000))
    nll = [-bounds[k] for k in (1, 10, 100, 1000)]
    assert nll == sorted(nll, reverse=True)  # the bound rises with K
    assert nll[-1] > exact_nll.mean().item()  # and stays above the exact value
    assert nll[0] - exact_nll.mean().item() > 0.5  # a loose q at K = 1
    assert nll[-1] - exact_nll.mean().item() < 0.1 * (nll[0] - exact_nll.mean().item())


def test_the_bernoulli_matrix_is_minus_the_summed_bce():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(7, 12, generator=generator)
    logits = 3 * torch.randn(5, 12, generator=generator)
    matrix = BernoulliLikelihood().log_likelihood_matrix(images, logits)
    for n in range(7):
        for j in range(5):
            direct = -BernoulliLikelihood().nats_per_image(logits[j : j + 1], images[n : n + 1])
            assert matrix[n, j].item() == pytest.approx(direct.item(), abs=1e-4)


@pytest.mark.parametrize("points", [4, 6, 3])
def test_an_even_or_tiny_grid_is_refused(points):
    with pytest.raises(ValueError, match="odd and at least 5"):
        exact_likelihood.gaussian_grid(points, 6.0)
