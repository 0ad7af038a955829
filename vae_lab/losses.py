"""The loss registry: reconstruction only, KL only, and both (the ELBO).

Each loss is a class picked by conf/loss/*.yaml through `_target_`, with the weights of its
terms as constructor arguments. Every loss gives back all its parts in nats per image, so
every run logs reconstruction and KL whatever it optimises.

Convention: reconstruction is BCE summed over pixels, which equals the article's
`784 * mean BCE` on 28x28 images.
"""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

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


def gaussian_kl_nats_per_image(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Give back KL(N(mean, exp(log_var)) || N(0, I)) per image: (B,).

    Closed form from Kingma and Welling 2014, appendix B:
    -1/2 * sum(1 + log sigma^2 - mu^2 - sigma^2).
    """
    return -0.5 * (1 + log_var - mean.pow(2) - log_var.exp()).sum(1)


class WeightedLoss:
    """recon_weight * reconstruction + kl_weight * KL; a weight of 0 leaves its term out of the graph."""

    requires_posterior = False  # True where the loss cannot be computed without q(z|x)

    def __init__(self, recon_weight: float, kl_weight: float):
        self.recon_weight = float(recon_weight)
        self.kl_weight = float(kl_weight)

    def __call__(self, output: ModelOutput, images: torch.Tensor) -> LossParts:
        recon = bce_nats_per_image(output.recon_logits, images).mean()
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
        return f"{type(self).__name__}(recon_weight={self.recon_weight}, kl_weight={self.kl_weight})"


class Reconstruction(WeightedLoss):
    """Reconstruction only: the plain autoencoder's loss (the VAE's KL is still logged)."""

    def __init__(self, recon_weight: float = 1.0):
        super().__init__(recon_weight=recon_weight, kl_weight=0.0)


class KL(WeightedLoss):
    """KL only: pulls every posterior onto the prior and ignores reconstruction."""

    requires_posterior = True

    def __init__(self, kl_weight: float = 1.0):
        super().__init__(recon_weight=0.0, kl_weight=kl_weight)


class ELBO(WeightedLoss):
    """Negative ELBO: reconstruction + KL (kl_weight != 1 gives the beta-VAE of Higgins et al. 2017)."""

    requires_posterior = True

    def __init__(self, recon_weight: float = 1.0, kl_weight: float = 1.0):
        super().__init__(recon_weight=recon_weight, kl_weight=kl_weight)
