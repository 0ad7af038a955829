"""The deterministic autoencoder and the VAE: one encoder/decoder pair, different heads.

An encoder maps images to features (B, feature_dim) and exposes `feature_dim`; a decoder maps
codes (B, latent_dim) to pixel logits. Any pair with that interface plugs into both models.
"""

from dataclasses import dataclass, fields
from typing import NamedTuple, Optional

import torch
from torch import nn


@dataclass
class ModelOutput:
    """What a forward pass gives back, by name."""

    recon_logits: torch.Tensor  # (B, C, H, W)
    code: torch.Tensor  # (B, latent_dim): the code the decoder saw
    mean: Optional[torch.Tensor] = None  # (B, latent_dim), VAE only
    log_var: Optional[torch.Tensor] = None  # (B, latent_dim), VAE only

    def float(self) -> "ModelOutput":
        """Give back the same output in fp32 (after a reduced-precision forward pass)."""
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        return ModelOutput(**{name: None if t is None else t.float() for name, t in values.items()})


class Posterior(NamedTuple):
    """The VAE encoder's Gaussian q(z|x)."""

    mean: torch.Tensor
    log_var: torch.Tensor


def reparameterise(mean: torch.Tensor, log_var: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Give back z = mean + sigma * noise, a draw from N(mean, exp(log_var)) for noise ~ N(0, I) (Kingma and
    Welling 2014's reparameterisation trick: the draw is differentiable in mean and log_var)."""
    return mean + torch.exp(0.5 * log_var) * noise


class _EncoderDecoder(nn.Module):
    """What both models share: the pair, decoding and sampling from the prior."""

    is_variational = False

    def __init__(self, latent_dim: int, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = encoder
        self.decoder = decoder

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Give back pixel probabilities (B, C, H, W)."""
        return torch.sigmoid(self.decoder(codes))

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Give back n decoded draws from the prior N(0, I), as pixel probabilities."""
        device = next(self.parameters()).device
        codes = torch.randn(n, self.latent_dim, generator=generator).to(device)
        return self.decode(codes)


class Autoencoder(_EncoderDecoder):
    """A deterministic autoencoder: encode(x) gives the code itself."""

    def __init__(self, latent_dim: int, encoder: nn.Module, decoder: nn.Module):
        super().__init__(latent_dim, encoder, decoder)
        self.to_code = nn.Linear(encoder.feature_dim, latent_dim)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Give back the code (B, latent_dim)."""
        return self.to_code(self.encoder(images))

    def forward(self, images: torch.Tensor) -> ModelOutput:
        code = self.encode(images)
        return ModelOutput(recon_logits=self.decoder(code), code=code)


class VAE(_EncoderDecoder):
    """A variational autoencoder (Kingma and Welling 2014) with a Gaussian encoder."""

    is_variational = True

    def __init__(self, latent_dim: int, encoder: nn.Module, decoder: nn.Module):
        super().__init__(latent_dim, encoder, decoder)
        self.to_mean = nn.Linear(encoder.feature_dim, latent_dim)
        self.to_log_var = nn.Linear(encoder.feature_dim, latent_dim)

    def encode(self, images: torch.Tensor) -> Posterior:
        """Give back the posterior's mean and log-variance, each (B, latent_dim)."""
        features = self.encoder(images)
        return Posterior(self.to_mean(features), self.to_log_var(features))

    def forward(self, images: torch.Tensor, noise: Optional[torch.Tensor] = None) -> ModelOutput:
        """noise: the draws from N(0, I) of the reparameterisation (B, latent_dim), fresh where None."""
        mean, log_var = self.encode(images)
        code = reparameterise(mean, log_var, torch.randn_like(mean) if noise is None else noise)
        return ModelOutput(recon_logits=self.decoder(code), code=code, mean=mean, log_var=log_var)
