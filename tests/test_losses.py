import pytest
import torch
import torch.nn.functional as F

from vae_lab.losses import ELBO, KL, Reconstruction, bce_nats_per_image, gaussian_kl_nats_per_image
from vae_lab.models import ModelOutput


def test_kl_of_the_prior_to_itself_is_zero():
    zeros = torch.zeros(5, 3)
    assert torch.equal(gaussian_kl_nats_per_image(zeros, zeros), torch.zeros(5))


def test_kl_matches_the_closed_form_of_torch_distributions():
    mean, log_var = torch.randn(6, 4), torch.randn(6, 4)
    posterior = torch.distributions.Normal(mean, torch.exp(0.5 * log_var))
    prior = torch.distributions.Normal(torch.zeros(4), torch.ones(4))
    expected = torch.distributions.kl_divergence(posterior, prior).sum(1)
    assert torch.allclose(gaussian_kl_nats_per_image(mean, log_var), expected, atol=1e-5)


def test_kl_by_hand():
    # one dimension, mean 1, variance e: 0.5 * (1 + e - 1 - 1) = 0.5 * (e - 1)
    value = gaussian_kl_nats_per_image(torch.tensor([[1.0]]), torch.tensor([[1.0]]))
    assert value.item() == pytest.approx(0.5 * (torch.e - 1))


def test_bce_is_torch_bce_summed_over_pixels():
    logits, images = torch.randn(3, 1, 28, 28), torch.rand(3, 1, 28, 28)
    expected = F.binary_cross_entropy(torch.sigmoid(logits), images, reduction="none").sum((1, 2, 3))
    assert torch.allclose(bce_nats_per_image(logits, images), expected, rtol=1e-4)
    # the article's 784 * mean BCE is the same number
    article = 784 * F.binary_cross_entropy(torch.sigmoid(logits), images, reduction="mean")
    assert bce_nats_per_image(logits, images).mean().item() == pytest.approx(article.item(), rel=1e-4)


def test_bce_of_a_pixel_by_hand():
    # logit 0 is probability 1/2: -log(1/2) per pixel, whatever the target
    value = bce_nats_per_image(torch.zeros(1, 1, 2, 2), torch.tensor([[[[0.0, 1.0], [0.3, 0.7]]]]))
    assert value.item() == pytest.approx(4 * torch.log(torch.tensor(2.0)).item())


def _vae_output():
    return ModelOutput(
        recon_logits=torch.randn(4, 1, 28, 28),
        code=torch.randn(4, 2),
        mean=torch.randn(4, 2),
        log_var=torch.randn(4, 2),
    )


def test_each_loss_gives_all_parts_and_its_own_total():
    output, images = _vae_output(), torch.rand(4, 1, 28, 28)
    recon = bce_nats_per_image(output.recon_logits, images).mean()
    kl = gaussian_kl_nats_per_image(output.mean, output.log_var).mean()
    for loss, expected_total in (
        (Reconstruction(), recon),
        (KL(), kl),
        (ELBO(), recon + kl),
        (ELBO(kl_weight=4.0), recon + 4 * kl),
        (ELBO(recon_weight=0.5, kl_weight=0.0), 0.5 * recon),
    ):
        parts = loss(output, images)
        assert parts.recon.item() == pytest.approx(recon.item())
        assert parts.kl.item() == pytest.approx(kl.item())
        assert parts.total.item() == pytest.approx(expected_total.item(), rel=1e-6)


def test_a_deterministic_model_logs_kl_as_not_applicable():
    output = ModelOutput(recon_logits=torch.randn(2, 1, 28, 28), code=torch.randn(2, 2))
    parts = Reconstruction()(output, torch.rand(2, 1, 28, 28))
    assert parts.kl is None
    assert parts.total.item() == pytest.approx(parts.recon.item())


def test_which_losses_need_an_encoder_distribution():
    assert not Reconstruction.requires_posterior
    assert KL.requires_posterior and ELBO.requires_posterior
