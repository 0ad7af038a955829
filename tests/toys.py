"""A model, a loss and a data set defined outside vae_lab, as a user adds them (docs/extending.md):
tests/test_extending.py picks them through config alone."""

from typing import Optional

import torch

from vae_lab.data import ImageData, load_mnist
from vae_lab.losses import ELBO, LossParts
from vae_lab.models import VAE


class ScaledPriorVAE(VAE):
    """A VAE with a constructor argument of its own: its prior draws are scaled by prior_scale."""

    def __init__(self, latent_dim: int, encoder, decoder, prior_scale: float = 1.0):
        super().__init__(latent_dim, encoder, decoder)
        self.prior_scale = prior_scale

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        codes = self.prior_scale * torch.randn(n, self.latent_dim, generator=generator)
        return self.decode(codes.to(next(self.parameters()).device))


class ELBOWithCodeL1(ELBO):
    """The negative ELBO plus l1_weight * mean |z|: a third named term, code_l1."""

    def __init__(
        self, recon_weight: float = 1.0, kl_weight: float = 1.0, l1_weight: float = 0.1, likelihood=None
    ):
        super().__init__(recon_weight, kl_weight, likelihood)
        self.l1_weight = float(l1_weight)

    def __call__(self, output, images) -> LossParts:
        parts = super().__call__(output, images)
        code_l1 = output.code.abs().sum(1).mean()
        return LossParts(
            total=parts.total + self.l1_weight * code_l1,
            recon=parts.recon,
            kl=parts.kl,
            terms={"code_l1": code_l1},
        )


def load_inverted_mnist(root: str = "data", limit: Optional[int] = None, invert: bool = True) -> ImageData:
    """MNIST with its pixels inverted (white digits on black become black on white): a data set with a
    key of its own, `invert`."""
    data = load_mnist(root, limit, download=False)
    if not invert:
        return data
    return ImageData(
        255 - data.train_images,
        data.train_labels,
        255 - data.test_images,
        data.test_labels,
        data.class_names,
    )
