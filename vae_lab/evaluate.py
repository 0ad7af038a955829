"""What a trained model gives on a split: its losses, codes, reconstructions, samples and manifold."""

import numpy as np
import torch
from scipy.stats import norm

from vae_lab.data import in_order, to_float
from vae_lab.losses import WeightedLoss


def _posterior_mean(model, images: torch.Tensor) -> torch.Tensor:
    encoded = model.encode(images)
    return encoded.mean if model.is_variational else encoded


@torch.no_grad()
def evaluate_loss(
    model, loss: WeightedLoss, images: torch.Tensor, batch_size: int, seed: int = 0
) -> dict[str, float | None]:
    """Give back the split's mean total, reconstruction and KL in nats per image.

    The VAE's single-sample estimate draws its noise from a fixed seed, so the same model
    gives the same numbers every time (load_run relies on it).
    """
    model.eval()
    sums = {"total": 0.0, "recon": 0.0, "kl": 0.0}
    has_kl = True
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for batch in in_order(len(images), batch_size):
            x = to_float(images[batch])
            parts = loss(model(x), x)
            weight = len(x)
            sums["total"] += parts.total.item() * weight
            sums["recon"] += parts.recon.item() * weight
            if parts.kl is None:
                has_kl = False
            else:
                sums["kl"] += parts.kl.item() * weight
    result = {key: value / len(images) for key, value in sums.items()}
    if not has_kl:
        result["kl"] = None
    return result


@torch.no_grad()
def encode_means(model, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Give back the code of each image (the posterior mean for a VAE): (N, latent_dim)."""
    model.eval()
    return torch.cat([_posterior_mean(model, to_float(images[b])) for b in in_order(len(images), batch_size)])


@torch.no_grad()
def reconstruct(model, images: torch.Tensor) -> torch.Tensor:
    """Give back the decoded codes of uint8 images as pixel probabilities."""
    model.eval()
    return model.decode(_posterior_mean(model, to_float(images)))


def manifold_values(size: int = 15) -> np.ndarray:
    """Give back the article's grid values: equally spaced quantiles of N(0, 1)."""
    return norm.ppf(np.linspace(0.01, 0.99, size))


@torch.no_grad()
def decode_manifold(model, size: int = 15) -> tuple[torch.Tensor, np.ndarray]:
    """Give back (size*size decoded images in row-major order, the grid values) for a 2-d latent.

    Row i has z2 = values[size - 1 - i] (top row is the largest), column j has z1 = values[j].
    """
    model.eval()
    values = manifold_values(size)
    z1, z2 = np.meshgrid(values, values[::-1])
    codes = torch.tensor(np.stack([z1.ravel(), z2.ravel()], axis=1), dtype=torch.float32)
    device = next(model.parameters()).device
    return model.decode(codes.to(device)), values
