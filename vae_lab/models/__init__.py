"""Encoders, decoders, and the autoencoder and VAE that pair them: plain PyTorch layers only.

The faster layers that vae_lab trains with by default are swapped in after the model is built
(vae_lab/speed), with the same parameters and state-dict keys.
"""

from vae_lab.models.autoencoder import VAE, Autoencoder, ModelOutput, Posterior, reparameterise
from vae_lab.models.conv import ConvDecoder, ConvEncoder
from vae_lab.models.mlp import MLPDecoder, MLPEncoder

__all__ = [
    "VAE",
    "Autoencoder",
    "ConvDecoder",
    "ConvEncoder",
    "MLPDecoder",
    "MLPEncoder",
    "ModelOutput",
    "Posterior",
    "reparameterise",
]
