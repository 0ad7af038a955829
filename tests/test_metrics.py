"""Each metric on cases with a known answer."""

import math

import numpy as np
import pytest
import torch

from vae_lab.evaluation import metrics, sample_quality
from vae_lab.evaluation.inference import importance_draws
from vae_lab.evaluation.metrics import stratified_subset
from vae_lab.losses import BernoulliLikelihood
from vae_lab.models import VAE, MLPDecoder, MLPEncoder


def test_the_binary_entropy_floor():
    assert metrics.binary_entropy_floor_nats(torch.randint(0, 2, (5, 1, 28, 28)).float()) == 0.0
    half = torch.full((3, 1, 28, 28), 0.5)
    assert metrics.binary_entropy_floor_nats(half) == pytest.approx(784 * math.log(2))


def test_kl_per_dimension_of_known_gaussians():
    mean = torch.tensor([[0.0, 1.0, 0.0]]).repeat(4, 1)
    log_var = torch.tensor([[0.0, 0.0, math.log(4.0)]]).repeat(4, 1)
    # KL(N(0,1)||N(0,1)) = 0; KL(N(1,1)||N(0,1)) = 1/2; KL(N(0,4)||N(0,1)) = (4 - 1 - log 4) / 2
    expected = torch.tensor([0.0, 0.5, (4 - 1 - math.log(4)) / 2])
    assert torch.allclose(metrics.kl_per_dimension(mean, log_var), expected, atol=1e-6)


def test_active_units_count_dimensions_whose_mean_varies():
    generator = torch.Generator().manual_seed(0)
    mean = torch.cat(
        [torch.randn(1000, 2, generator=generator), 0.01 * torch.randn(1000, 3, generator=generator)], 1
    )
    assert metrics.active_units(mean) == 2


def test_mutual_information_is_zero_when_every_posterior_is_the_prior():
    mean, log_var = torch.zeros(200, 2), torch.zeros(200, 2)
    assert metrics.mutual_information(mean, log_var, torch.randn(200, 2)) == pytest.approx(0.0, abs=1e-9)


def test_mutual_information_reaches_log_n_for_distinct_sharp_posteriors():
    mean = torch.arange(100.0).unsqueeze(1) * 10
    log_var = torch.full((100, 1), math.log(0.01))
    z = mean + 0.1 * torch.randn(100, 1)
    assert metrics.mutual_information(mean, log_var, z) == pytest.approx(math.log(100), abs=1e-3)


def test_knn_accuracy_is_none_with_fewer_training_codes_than_k():
    codes, labels = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)), torch.arange(4)
    assert metrics.knn_accuracy(codes, labels, codes, labels, k=5) is None
    assert metrics.knn_accuracy(codes, labels, codes, labels, k=4) is not None


def test_knn_accuracy_on_codes_that_are_a_function_of_the_label():
    labels = torch.arange(10).repeat(50)
    codes = torch.stack([labels.float(), -labels.float()], 1)
    assert metrics.knn_accuracy(codes, labels, codes + 0.1, labels, k=5) == 1.0
    noise_train, noise_test = torch.randn(500, 2), torch.randn(500, 2)
    assert metrics.knn_accuracy(noise_train, labels, noise_test, labels) < 0.25
    assert metrics.majority_share(torch.tensor([0, 0, 0, 1])) == 0.75


def test_class_histogram_counts_each_predicted_class():
    probabilities = torch.eye(10)[torch.tensor([3, 3, 1, 9])]
    histogram = sample_quality.class_histogram(probabilities)
    assert histogram.tolist() == [0, 0.25, 0, 0.5, 0, 0, 0, 0, 0, 0.25]


def test_frechet_distance_of_two_known_gaussians():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=generator)
    shift = torch.tensor([1.0, 2.0, 0.0])
    b = torch.randn(20000, 3, generator=generator) * 2 + shift
    # |mu|^2 + tr(I + 4I - 2 * 2I) = 5 + 3
    assert sample_quality.frechet_distance(a, b) == pytest.approx(8.0, rel=0.03)
    assert sample_quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_stratified_subset_takes_the_same_count_of_each_class():
    labels = torch.tensor([0, 1, 1, 0, 2, 2, 1, 0, 2])
    subset = stratified_subset(labels, 6)
    assert subset.tolist() == [0, 1, 2, 3, 4, 5]
    assert labels[subset].bincount().tolist() == [2, 2, 2]


def _one_dim_vae(ignore_z: bool = False) -> VAE:
    torch.manual_seed(0)
    model = VAE(
        1, MLPEncoder(image_shape=(1, 2, 2), hidden=8), MLPDecoder(1, image_shape=(1, 2, 2), hidden=8)
    )
    if ignore_z:
        with torch.no_grad():
            model.decoder.body[0].weight.zero_()  # the decoder no longer sees z
            for head in (model.to_mean, model.to_log_var):
                head.weight.zero_()
                head.bias.zero_()  # q(z|x) = N(0, 1) = p(z)
    return model.eval()


def _exact_log_px(model, images):
    """log p(x) = log integral p(x|z) p(z) dz on a fine grid, for a 1-d latent."""
    grid = torch.linspace(-10, 10, 20001).unsqueeze(1)
    step = 20 / 20000
    with torch.no_grad():
        logits = model.decoder(grid)  # (G, 1, 2, 2)
    x = images.float() / 255
    log_px_z = (
        -torch.nn.functional.binary_cross_entropy_with_logits(
            logits.unsqueeze(1).expand(-1, len(x), -1, -1, -1),
            x.expand(len(grid), *x.shape),
            reduction="none",
        )
        .flatten(2)
        .sum(2)
    )
    log_pz = -0.5 * (grid.pow(2) + math.log(2 * math.pi))
    return torch.logsumexp(log_px_z + log_pz, 0) + math.log(step)


def importance_log_weights(model, images, k):
    """The IWAE log weights of a model: its posterior draws (vae_lab.evaluation.inference) into the metric."""
    draws = importance_draws(model, images, k, BernoulliLikelihood())
    return metrics.importance_log_weights(draws.log_px_z, draws.z, draws.mean, draws.log_var)


def test_iwae_lies_between_the_elbo_and_log_px_and_grows_with_k():
    model = _one_dim_vae()
    with torch.no_grad():
        model.to_log_var.bias.fill_(
            -3.0
        )  # a posterior too narrow: the ELBO is loose, IWAE must close the gap
    images = torch.randint(0, 256, (1000, 1, 2, 2), dtype=torch.uint8)
    torch.manual_seed(1)
    log_weights = importance_log_weights(model, images, 100)
    bounds = metrics.iwae_bounds(log_weights, (1, 10, 100))
    log_px = _exact_log_px(model, images)
    assert bounds[1] < bounds[10] < bounds[100]
    assert log_px.mean().item() - bounds[100] < 0.75 * (log_px.mean().item() - bounds[1])
    # each estimate is a stochastic lower bound: its mean may not exceed log p(x) beyond its noise
    excess = metrics.log_mean_exp(log_weights, 0) - log_px
    assert excess.mean() <= 3 * excess.std() / math.sqrt(len(excess))


def test_iwae_is_exact_when_the_decoder_ignores_z_and_q_is_the_prior():
    model = _one_dim_vae(ignore_z=True)
    images = torch.randint(0, 256, (20, 1, 2, 2), dtype=torch.uint8)
    bounds = metrics.iwae_bounds(importance_log_weights(model, images, 100), (1, 10, 100))
    log_px = _exact_log_px(model, images).mean().item()
    for bound in bounds.values():
        assert bound == pytest.approx(log_px, abs=1e-4)


def test_the_manifold_grid_is_the_articles_normal_quantiles():
    from scipy.stats import norm

    from vae_lab.evaluation.inference import manifold_values

    expected = norm.ppf(np.linspace(0.01, 0.99, 15))  # the article's grid
    assert np.allclose(manifold_values(15), expected, rtol=0, atol=1e-12)
