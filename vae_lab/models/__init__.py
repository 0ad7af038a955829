"""Encoders, decoders, and the autoencoder and VAE that pair them."""

from vae_lab.models.autoencoder import VAE, Autoencoder, ModelOutput, Posterior, reparameterise
from vae_lab.models.conv import ConvDecoder, ConvEncoder
from vae_lab.models.layers import (
    FastConvTranspose2d,
    FastDropout,
    OneChannelConvTranspose2d,
    ReluBatchNormDropout,
)
from vae_lab.models.mlp import MLPDecoder, MLPEncoder

__all__ = [
    "VAE",
    "Autoencoder",
    "ConvDecoder",
    "ConvEncoder",
    "FastConvTranspose2d",
    "FastDropout",
    "MLPDecoder",
    "MLPEncoder",
    "ModelOutput",
    "OneChannelConvTranspose2d",
    "Posterior",
    "ReluBatchNormDropout",
    "reparameterise",
]
