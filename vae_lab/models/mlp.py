"""Fully connected encoder/decoder pairs: the classic PyTorch VAE example's (784-400-latent, ReLU) and
deeper ones such as Davidson et al. 2018's (784-256-128-latent, ReLU), by the widths in `hidden`, or
Burda et al. 2016's (784-200-200-50, tanh), by `activation`."""

import math
from collections.abc import Sequence

import torch
from torch import nn

from vae_lab.errors import ConfigError


def hidden_widths(hidden: int | Sequence[int]) -> list[int]:
    """Give back the hidden layers' widths: one int is one layer, a list is one layer per entry."""
    widths = [hidden] if isinstance(hidden, int) else list(hidden) if isinstance(hidden, Sequence) else None
    if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ConfigError(
            f"the MLP's hidden={hidden!r} is not a layer width: give a positive integer (one hidden "
            "layer, e.g. 400) or a non-empty list of them (one layer each, e.g. [256, 128])"
        )
    return widths


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


def activation_layer(activation: str) -> type[nn.Module]:
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"the MLP's activation={activation!r} is not one vae_lab knows: "
            f"use one of {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[activation]


def dense_stack(widths: list[int], activation: str = "relu") -> list[nn.Module]:
    """Linear + the activation for each consecutive pair of widths."""
    layer = activation_layer(activation)
    layers: list[nn.Module] = []
    for size_in, size_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(size_in, size_out), layer()]
    return layers


class MLPEncoder(nn.Module):
    """Images (B, C, H, W) -> features (B, last hidden width)."""

    def __init__(
        self,
        image_shape: Sequence[int] = (1, 28, 28),
        hidden: int | Sequence[int] = 400,
        activation: str = "relu",
    ):
        super().__init__()
        widths = hidden_widths(hidden)
        # one int keeps the state-dict keys of the one-layer network (body.1): shipped models load
        self.body = nn.Sequential(nn.Flatten(), *dense_stack([math.prod(image_shape), *widths], activation))
        self.feature_dim = widths[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


class MLPDecoder(nn.Module):
    """Codes (B, latent_dim) -> pixel logits (B, C, H, W); `hidden` lists the widths from the code up."""

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int] = (1, 28, 28),
        hidden: int | Sequence[int] = 400,
        activation: str = "relu",
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        widths = [latent_dim, *hidden_widths(hidden)]
        layers = dense_stack(widths, activation)
        self.body = nn.Sequential(*layers, nn.Linear(widths[-1], math.prod(self.image_shape)))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.body(codes).view(-1, *self.image_shape)  # (B, 784) -> (B, 1, 28, 28)
