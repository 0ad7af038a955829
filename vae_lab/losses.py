"""The loss registry: reconstruction only, KL only, and both (the ELBO).

Each loss is a class picked by conf/loss/*.yaml through `_target_`, with the weights of its
terms as constructor arguments. Every loss gives back all its parts in nats per image, so
every run logs reconstruction and KL whatever it optimises.

Convention: reconstruction is -log p(x|z) summed over pixels (and channels). By default p(x|z) is
Bernoulli: BCE summed over pixels, which equals the article's `784 * mean BCE` on 28x28 images.
`likelihood="gaussian"` takes p(x|z) = N(x; sigmoid(logits), gaussian_variance * I) instead.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from vae_lab.errors import ConfigError
from vae_lab.models.autoencoder import ModelOutput


@dataclass
class LossParts:
    """Batch means in nats per image; `kl` is None for a deterministic model (not applicable)."""

    total: torch.Tensor
    recon: torch.Tensor
    kl: Optional[torch.Tensor]


def bce_nats_per_image(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Give back -log p(x|z) under independent Bernoulli pixels, summed per image: (B,)."""
    return F.binary_cross_entropy_with_logits(logits, images, reduction="none").flatten(1).sum(1)


def gaussian_nats_per_image(logits: torch.Tensor, images: torch.Tensor, variance: float) -> torch.Tensor:
    """Give back -log N(x; sigmoid(logits), variance * I) summed per image: (B,).

    Per pixel: (x - mean)^2 / (2 variance) + log(2 pi variance) / 2, so the sum is the squared error
    over 2 variance plus a constant; a density, it can be negative.
    """
    squared_error = (images - torch.sigmoid(logits)).pow(2).flatten(1).sum(1)
    pixels = images[0].numel()
    return squared_error / (2 * variance) + 0.5 * pixels * math.log(2 * math.pi * variance)


class BernoulliLikelihood:
    """p(x|z): independent Bernoulli pixels of probability sigmoid(logits), the article's choice."""

    name = "bernoulli"

    def nats_per_image(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return bce_nats_per_image(logits, images)

    def settings(self) -> dict:
        return {"likelihood": self.name}


class GaussianLikelihood:
    """p(x|z): independent Gaussian pixels of mean sigmoid(logits) and a fixed variance."""

    name = "gaussian"

    def __init__(self, variance: float):
        self.variance = variance

    def nats_per_image(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return gaussian_nats_per_image(logits, images, self.variance)

    def floor_nats(self, pixels: int) -> float:
        """The lowest -log p(x|z) of an image: the constant reached where the mean equals x."""
        return 0.5 * pixels * math.log(2 * math.pi * self.variance)

    def settings(self) -> dict:
        return {"likelihood": self.name, "gaussian_variance": self.variance}


LIKELIHOODS = ("bernoulli", "gaussian")


def make_likelihood(likelihood: str = "bernoulli", gaussian_variance: float = 0.01):
    """Give back the pixel likelihood named in conf/loss/*.yaml, after checking its settings."""
    if likelihood not in LIKELIHOODS:
        raise ConfigError(
            f"loss.likelihood={likelihood!r} is not allowed: it must be one of {', '.join(LIKELIHOODS)}."
        )
    if likelihood == "bernoulli":
        return BernoulliLikelihood()
    variance = gaussian_variance
    if isinstance(variance, bool) or not isinstance(variance, (int, float)) or not 0 < variance < math.inf:
        raise ConfigError(
            f"loss.gaussian_variance={variance!r} is not allowed: it must be a positive, finite number "
            "(the variance of each pixel in [0, 1] units; 0.01 is a standard deviation of 0.1)."
        )
    return GaussianLikelihood(float(variance))


def gaussian_kl_nats_per_image(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Give back KL(N(mean, exp(log_var)) || N(0, I)) per image: (B,).

    Closed form from Kingma and Welling 2014, appendix B:
    -1/2 * sum(1 + log sigma^2 - mu^2 - sigma^2).
    """
    return -0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum(1)


class WeightedLoss:
    """recon_weight * reconstruction + kl_weight * KL; a weight of 0 leaves its term out of the graph.

    likelihood: "bernoulli" (BCE, the default) or "gaussian" (sum of squared errors / (2 gaussian_variance)
    + a constant); gaussian_variance is unused under Bernoulli.
    """

    requires_posterior = False  # True where the loss cannot be computed without q(z|x)

    def __init__(
        self,
        recon_weight: float,
        kl_weight: float,
        likelihood: str = "bernoulli",
        gaussian_variance: float = 0.01,
    ):
        self.recon_weight = float(recon_weight)
        self.kl_weight = float(kl_weight)
        self.likelihood = make_likelihood(likelihood, gaussian_variance)

    def __call__(self, output: ModelOutput, images: torch.Tensor) -> LossParts:
        recon = self.likelihood.nats_per_image(output.recon_logits, images).mean()
        kl = None
        if output.mean is not None:
            kl = gaussian_kl_nats_per_image(output.mean, output.log_var).mean()
        total = torch.zeros((), device=images.device)
        if self.recon_weight:
            total = total + self.recon_weight * recon
        if self.kl_weight and kl is not None:
            total = total + self.kl_weight * kl
        return LossParts(total=total, recon=recon, kl=kl)

    def __repr__(self) -> str:
        settings = "".join(f", {key}={value!r}" for key, value in self.likelihood.settings().items())
        if self.likelihood.name == "bernoulli":
            settings = ""  # the default, left out
        return (
            f"{type(self).__name__}(recon_weight={self.recon_weight}, kl_weight={self.kl_weight}{settings})"
        )


class Reconstruction(WeightedLoss):
    """Reconstruction only: the plain autoencoder's loss (the VAE's KL is still logged)."""

    def __init__(
        self, recon_weight: float = 1.0, likelihood: str = "bernoulli", gaussian_variance: float = 0.01
    ):
        super().__init__(recon_weight, 0.0, likelihood, gaussian_variance)


class KL(WeightedLoss):
    """KL only: pulls every posterior onto the prior and ignores reconstruction."""

    requires_posterior = True

    def __init__(
        self, kl_weight: float = 1.0, likelihood: str = "bernoulli", gaussian_variance: float = 0.01
    ):
        super().__init__(
            0.0, kl_weight, likelihood, gaussian_variance
        )  # the likelihood: for the logged recon


class ELBO(WeightedLoss):
    """Negative ELBO: reconstruction + KL (kl_weight != 1 gives the beta-VAE of Higgins et al. 2017)."""

    requires_posterior = True

    def __init__(
        self,
        recon_weight: float = 1.0,
        kl_weight: float = 1.0,
        likelihood: str = "bernoulli",
        gaussian_variance: float = 0.01,
    ):
        super().__init__(recon_weight, kl_weight, likelihood, gaussian_variance)
