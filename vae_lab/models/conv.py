"""The article's convolutional encoder and decoder (3x3 kernels, 'same' padding, ReLU), in plain layers."""

from collections.abc import Sequence

import torch
from torch import nn


def _same_size(size: int, stride: int) -> int:
    """Spatial size after a 3x3 conv with padding 1 (Keras 'same')."""
    return (size - 1) // stride + 1


class ConvEncoder(nn.Module):
    """Images (B, C, H, W) -> features (B, feature_dim); the model adds the heads to the latent.

    Each block is conv, ReLU and, for the article's VAE, BatchNorm and Dropout: in the article's
    Keras code the activation sits inside the conv, so it comes before the BatchNorm.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        channels: Sequence[int] = (32, 64, 64, 64),
        strides: Sequence[int] = (1, 2, 2, 1),
        batch_norm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        size, previous = image_size, in_channels
        for out_channels, stride in zip(channels, strides, strict=True):
            layers += [nn.Conv2d(previous, out_channels, 3, stride=stride, padding=1), nn.ReLU(inplace=True)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            size, previous = _same_size(size, stride), out_channels
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.feature_dim = previous * size * size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class ConvDecoder(nn.Module):
    """Codes (B, latent_dim) -> pixel logits (B, C, H, W), mirroring the encoder with transposed convs."""

    def __init__(
        self,
        latent_dim: int,
        out_channels: int = 1,
        image_size: int = 28,
        start_channels: int = 64,
        channels: Sequence[int] = (64, 64, 32),
        strides: Sequence[int] = (1, 2, 2),
    ):
        super().__init__()
        upscale = 1
        for stride in strides:
            upscale *= stride
        if image_size % upscale:
            raise ValueError(
                f"image_size={image_size} is not a multiple of {upscale}, the decoder's upscale (the product "
                f"of its strides {list(strides)}): choose data.image_size as a multiple of {upscale}."
            )
        self.start_shape = (start_channels, image_size // upscale, image_size // upscale)
        self.project = nn.Sequential(
            nn.Linear(latent_dim, start_channels * self.start_shape[1] ** 2), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        previous = start_channels
        for channels_out, stride in zip(channels, strides, strict=True):
            # stride 2 with output_padding 1 doubles the size exactly, as Keras 'same' does
            layers += [
                nn.ConvTranspose2d(previous, channels_out, 3, stride, padding=1, output_padding=stride - 1),
                nn.ReLU(inplace=True),
            ]
            previous = channels_out
        # the last layer gives logits: the loss applies the sigmoid inside a stable BCE
        layers.append(nn.ConvTranspose2d(previous, out_channels, 3, stride=1, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        features = self.project(codes).view(-1, *self.start_shape)  # (B, 64*7*7) -> (B, 64, 7, 7)
        return self.body(features)
