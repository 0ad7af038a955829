"""The fully connected pair of the classic PyTorch VAE example (784-400-latent, ReLU)."""

from collections.abc import Sequence

import torch
from torch import nn


class MLPEncoder(nn.Module):
    """Images (B, C, H, W) -> features (B, hidden)."""

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), hidden: int = 400):
        super().__init__()
        in_features = 1
        for size in image_shape:
            in_features *= size
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU())
        self.feature_dim = hidden

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class MLPDecoder(nn.Module):
    """Codes (B, latent_dim) -> pixel logits (B, C, H, W)."""

    def __init__(self, latent_dim: int, image_shape: Sequence[int] = (1, 28, 28), hidden: int = 400):
        super().__init__()
        self.image_shape = tuple(image_shape)
        out_features = 1
        for size in self.image_shape:
            out_features *= size
        self.body = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_features))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.body(codes).view(-1, *self.image_shape)  # (B, 784) -> (B, 1, 28, 28)
