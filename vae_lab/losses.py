"""The loss registry: reconstruction only, KL only, and both (the ELBO).

Each loss is a class picked by conf/loss/*.yaml through `_target_`, with the weights of its
terms as constructor arguments. Every loss gives back all its parts in nats per image (LossParts), so
every run logs reconstruction and KL whatever it optimises, and any further term a loss names.

The interface a loss keeps (docs/extending.md): called as loss(output: ModelOutput, images) it gives
back LossParts; `requires_posterior` (True where it needs the VAE's q(z|x)) lets a run refuse a
deterministic model before training; `likelihood` (the pixel likelihood p(x|z)) is what the
evaluation scores the model under. A loss that decodes codes of its own (the importance-weighted
bound's further draws) sets `uses_decoder = True` and is called as loss(output, images, decode=...),
decode mapping codes (B, latent_dim) to pixel logits with the model's own decoder (`loss_parts`).

Convention: reconstruction is -log p(x|z) summed over pixels (and channels). p(x|z) is a likelihood
object, also picked by `_target_` (conf/loss/likelihood/*.yaml): Bernoulli by default, BCE summed over
pixels, which equals the article's `784 * mean BCE` on 28x28 images; or Gaussian,
N(x; sigmoid(logits), variance * I). Each likelihood knows its own floor, the least -log p(x|z) of an image.
"""

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from vae_lab.errors import ConfigError
from vae_lab.models.autoencoder import ModelOutput, reparameterise


@dataclass
class LossParts:
    """What a loss gives back: batch means per image, in nats unless a term's name says otherwise.

    `kl` is None for a deterministic model (not applicable). `terms` holds a loss's own further terms by
    name (a scalar tensor each): every run logs them per epoch beside total, recon and kl, summary.json
    keeps them under train and test, and `vae_lab.compare` tabulates them (docs/extending.md).
    """

    total: torch.Tensor
    recon: torch.Tensor
    kl: Optional[torch.Tensor]
    terms: dict[str, torch.Tensor] = field(default_factory=dict)

    def named(self) -> dict[str, Optional[torch.Tensor]]:
        """Give back every part by name: total, recon, kl, then the loss's own terms."""
        clash = self.terms.keys() & {"total", "recon", "kl"}
        if clash:
            raise ValueError(f"a loss's own terms cannot be named {', '.join(sorted(clash))}: rename them")
        return {"total": self.total, "recon": self.recon, "kl": self.kl, **self.terms}


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


def bernoulli_log_likelihood_matrix(images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Give back log p(x_n | z_j) (N, G) for flattened images (N, P) in [0, 1] and the logits (G, P) of
    Bernoulli pixels: x . logits - sum softplus(logits), minus the summed BCE, as one matrix product."""
    return images @ logits.T - F.softplus(logits).sum(1)


def gaussian_log_likelihood_matrix(
    images: torch.Tensor, means: torch.Tensor, variance: float
) -> torch.Tensor:
    """Give back log N(x_n; mean_j, variance I) (N, G) for flattened images (N, P) and means (G, P):
    -(|x|^2 - 2 x . m + |m|^2) / (2 variance) - P log(2 pi variance) / 2."""
    squared = images.pow(2).sum(1, keepdim=True) - 2 * images @ means.T + means.pow(2).sum(1)
    return -squared / (2 * variance) - 0.5 * images.shape[1] * math.log(2 * math.pi * variance)


def binary_entropy_nats_per_image(images: torch.Tensor) -> torch.Tensor:
    """Give back sum_pixels H(x) of images in [0, 1]: the lowest BCE any model can reach on each (B,).

    BCE(x, p) = H(x) + KL(Bernoulli(x) || Bernoulli(p)) >= H(x), with equality at p = x.
    """
    x = images.flatten(1).double().clamp(0, 1)
    return -(torch.special.xlogy(x, x) + torch.special.xlogy(1 - x, 1 - x)).sum(1)


class BernoulliLikelihood:
    """p(x|z): independent Bernoulli pixels of probability sigmoid(logits), the article's choice."""

    name = "bernoulli"

    def nats_per_image(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return bce_nats_per_image(logits, images)

    def log_likelihood_matrix(self, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log p(x_n | logits_j) for every flattened image and every row of logits: (N, G)."""
        return bernoulli_log_likelihood_matrix(images, logits)

    def floor_nats(self, images: torch.Tensor, chunk: int = 10000) -> float:
        """Give back the lowest mean -log p(x|z) any decoder can reach on uint8 images: their binary
        entropy (BCE on grey pixels is not a normalised likelihood, so its floor is above zero)."""
        total = 0.0
        for start in range(0, len(images), chunk):  # float64 copies of a large split add up
            batch = images[start : start + chunk]
            total += binary_entropy_nats_per_image(batch.float().div_(255)).mean().item() * len(batch)
        return total / len(images)

    def summary(self, floor: float) -> dict:
        """The likelihood's own entries of summary.json's metrics.likelihood."""
        return {"bce_floor": floor}

    def __repr__(self) -> str:
        return "BernoulliLikelihood()"


class GaussianLikelihood:
    """p(x|z): independent Gaussian pixels of mean sigmoid(logits) and a fixed variance."""

    name = "gaussian"

    def __init__(self, variance: float = 0.01):
        self.variance = float(variance)

    def nats_per_image(self, logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return gaussian_nats_per_image(logits, images, self.variance)

    def log_likelihood_matrix(self, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log p(x_n | logits_j) for every flattened image and every row of logits: (N, G)."""
        return gaussian_log_likelihood_matrix(images, torch.sigmoid(logits), self.variance)

    def floor_nats(self, images: torch.Tensor) -> float:
        """The lowest -log p(x|z) of an image: the constant reached where the mean equals x."""
        return 0.5 * images[0].numel() * math.log(2 * math.pi * self.variance)

    def summary(self, floor: float) -> dict:
        return {"bce_floor": None, "gaussian_floor": floor, "gaussian_variance": self.variance}

    def __repr__(self) -> str:
        return f"GaussianLikelihood(variance={self.variance!r})"


def gaussian_kl_terms(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Give back 1 + log sigma^2 - mu^2 - sigma^2 per dimension: -1/2 of it is KL(q(z_d|x) || N(0, 1)).

    Closed form from Kingma and Welling 2014, appendix B.
    """
    return 1 + log_var - mean.pow(2) - log_var.exp()


def gaussian_kl_nats_per_image(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Give back KL(N(mean, exp(log_var)) || N(0, I)) per image: -1/2 sum(1 + log s^2 - mu^2 - s^2) (B,)."""
    return -0.5 * gaussian_kl_terms(mean, log_var).sum(1)


def log_mean_exp(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log of the mean of exp(values) along dim, without overflow."""
    return torch.logsumexp(values, dim) - math.log(values.shape[dim])


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag(exp(log_var))) summed over the last dimension."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (z - mean).pow(2) / log_var.exp()).sum(-1)


def importance_log_weights(
    log_px_z: torch.Tensor, z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor
) -> torch.Tensor:
    """Give back log p(x|z) + log p(z) - log q(z|x) for draws z (k, N, D) of q(z|x): (k, N) (Burda et al.
    2016), with p(z) = N(0, I) and q(z|x) = N(mean, diag(exp(log_var)))."""
    log_pz = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))
    log_qz_x = gaussian_log_density(z, mean, log_var)
    return log_px_z + log_pz - log_qz_x


def loss_parts(loss, output: ModelOutput, images: torch.Tensor, decode) -> "LossParts":
    """Call `loss` as its interface says: loss(output, images), or loss(output, images, decode=decode)
    where it declares `uses_decoder`; decode maps codes (B, latent_dim) to pixel logits."""
    if getattr(loss, "uses_decoder", False):
        return loss(output, images, decode=decode)
    return loss(output, images)


class WeightedLoss:
    """recon_weight * reconstruction + kl_weight * KL; a weight of 0 leaves its term out of the graph.

    likelihood: the pixel likelihood p(x|z) (conf/loss/likelihood/*.yaml), Bernoulli when not given.
    """

    requires_posterior = False  # True where the loss cannot be computed without q(z|x)

    def __init__(self, recon_weight: float, kl_weight: float, likelihood=None):
        self.recon_weight = float(recon_weight)
        self.kl_weight = float(kl_weight)
        self.likelihood = likelihood if likelihood is not None else BernoulliLikelihood()

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
        likelihood = "" if self.likelihood.name == "bernoulli" else f", likelihood={self.likelihood!r}"
        return (
            f"{type(self).__name__}(recon_weight={self.recon_weight}, kl_weight={self.kl_weight}{likelihood})"
        )


class Reconstruction(WeightedLoss):
    """Reconstruction only: the plain autoencoder's loss (the VAE's KL is still logged)."""

    def __init__(self, recon_weight: float = 1.0, likelihood=None):
        super().__init__(recon_weight, 0.0, likelihood)


class KL(WeightedLoss):
    """KL only: pulls every posterior onto the prior and ignores reconstruction (still logged, under
    the likelihood)."""

    requires_posterior = True

    def __init__(self, kl_weight: float = 1.0, likelihood=None):
        super().__init__(0.0, kl_weight, likelihood)


class ELBO(WeightedLoss):
    """Negative ELBO: reconstruction + KL (kl_weight != 1 gives the beta-VAE of Higgins et al. 2017)."""

    requires_posterior = True

    def __init__(self, recon_weight: float = 1.0, kl_weight: float = 1.0, likelihood=None):
        super().__init__(recon_weight, kl_weight, likelihood)


IMPORTANCE_BOUNDS = ("iwae", "elbo")


class ImportanceWeighted:
    """The negative importance-weighted bound of Burda et al. 2016 on k draws z_1..z_k of q(z|x):
    -log (1/k) sum_i w_i with w_i = p(x|z_i) p(z_i) / q(z_i|x).

    bound="iwae" is their IWAE objective; bound="elbo" takes the mean of the k log weights instead, the
    ELBO estimated on k draws (their "VAE, k samples"). At k = 1 both are the ELBO's one-draw estimate:
    reconstruction at the forward pass's own code plus log q(z|x) - log p(z), whose mean over draws is the
    closed-form ELBO. The first draw is the forward pass's code; the other k - 1 are decoded by `decode`.
    recon and kl are logged as the ELBO's (the forward pass's draw, the closed-form KL); `total` is the
    bound the run optimises, and test.total the same bound on the test split.
    """

    requires_posterior = True
    uses_decoder = True

    def __init__(self, samples: int = 5, bound: str = "iwae", likelihood=None):
        if not (isinstance(samples, int) and not isinstance(samples, bool) and samples >= 1):
            raise ConfigError(f"loss.samples={samples!r} is not allowed: it must be a positive integer (k).")
        if bound not in IMPORTANCE_BOUNDS:
            raise ConfigError(f"loss.bound={bound!r} is not allowed: it must be one of iwae, elbo.")
        self.samples, self.bound = samples, bound
        self.likelihood = likelihood if likelihood is not None else BernoulliLikelihood()

    def log_weights(self, output: ModelOutput, images: torch.Tensor, decode) -> torch.Tensor:
        """Give back the k log weights of each image (k, B), the forward pass's code first."""
        mean, log_var = output.mean, output.log_var
        first = -self.likelihood.nats_per_image(output.recon_logits, images)
        z, log_px_z = output.code.unsqueeze(0), first.unsqueeze(0)
        if self.samples > 1:
            noise = torch.randn(self.samples - 1, *mean.shape, device=mean.device)
            more = reparameterise(mean, log_var, noise)
            logits = decode(more.flatten(0, 1))
            targets = images.expand(self.samples - 1, *images.shape).flatten(0, 1)
            nll = self.likelihood.nats_per_image(logits, targets).view(self.samples - 1, len(images))
            z, log_px_z = torch.cat([z, more]), torch.cat([log_px_z, -nll])
        return importance_log_weights(log_px_z, z, mean, log_var)

    def __call__(self, output: ModelOutput, images: torch.Tensor, decode) -> LossParts:
        log_weights = self.log_weights(output, images, decode)
        bound = log_mean_exp(log_weights, 0) if self.bound == "iwae" else log_weights.mean(0)
        recon = self.likelihood.nats_per_image(output.recon_logits, images).mean()
        kl = gaussian_kl_nats_per_image(output.mean, output.log_var).mean()
        return LossParts(total=-bound.mean(), recon=recon, kl=kl)

    def __repr__(self) -> str:
        likelihood = "" if self.likelihood.name == "bernoulli" else f", likelihood={self.likelihood!r}"
        return f"ImportanceWeighted(samples={self.samples}, bound={self.bound!r}{likelihood})"
