"""A trained model run over many images in batches: losses, codes, decodings and importance draws.

Every function here is under torch.no_grad and puts the model in eval mode; images come in as the
data sets keep them (uint8), results go out as tensors for vae_lab/evaluation/metrics.py and
vae_lab/figures/plots.py.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from vae_lab.data import ImageData, in_order, to_float
from vae_lab.losses import loss_parts
from vae_lab.models.autoencoder import reparameterise

# images or codes a batch: on a CPU, batches of 250 encode, decode and classify 2-3x faster than batches
# of 1,000, whose activations outgrow the caches (docs/benchmarks.md, Evaluation batches)
BATCH_SIZE = 250


def posterior_mean(model, images: torch.Tensor) -> torch.Tensor:
    """Give back the code of float images: the posterior mean for a VAE, the code for an autoencoder."""
    encoded = model.encode(images)
    return encoded.mean if model.is_variational else encoded


@torch.no_grad()
def evaluate_loss(
    model, loss, images: torch.Tensor, batch_size: int, seed: int = 0
) -> dict[str, float | None]:
    """Give back the split's mean total, reconstruction and KL in nats per image (None: not applicable),
    and the loss's own terms.

    The VAE's single-sample estimate draws its noise from a fixed seed, so the same model
    gives the same numbers every time (load_run relies on it).
    """
    model.eval()
    sums: dict[str, float | None] = {}
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for batch in in_order(len(images), batch_size):
            x = to_float(images[batch])
            for name, value in loss_parts(loss, model(x), x, model.decoder).named().items():
                if value is None or sums.get(name, 0.0) is None:
                    sums[name] = None
                else:
                    sums[name] = sums.get(name, 0.0) + value.item() * len(x)
    return {name: None if total is None else total / len(images) for name, total in sums.items()}


@torch.no_grad()
def encode_means(model, images: torch.Tensor, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Give back the code of each image (the posterior mean for a VAE): (N, latent_dim)."""
    model.eval()
    return torch.cat([posterior_mean(model, to_float(images[b])) for b in in_order(len(images), batch_size)])


@torch.no_grad()
def encode_posteriors(
    model, images: torch.Tensor, batch_size: int = BATCH_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Give back the VAE's posterior means and log-variances of the images: (N, D) each."""
    model.eval()
    pairs = [model.encode(to_float(images[b])) for b in in_order(len(images), batch_size)]
    return torch.cat([p.mean for p in pairs]), torch.cat([p.log_var for p in pairs])


@dataclass
class Codes:
    """The codes of a trained model that the evaluation's sections share: the test split's (posterior
    means and log-variances for a VAE, the codes for an autoencoder) and the first training images'
    for the kNN vote."""

    test: torch.Tensor  # (N_test, latent_dim)
    test_log_var: Optional[torch.Tensor]  # (N_test, latent_dim) for a VAE, else None
    train: torch.Tensor  # (knn_train_images, latent_dim)
    train_labels: torch.Tensor


def encode_codes(model, data: ImageData, train_images: int) -> Codes:
    """Give back the Codes of the test split and of the first `train_images` training images."""
    if model.is_variational:
        test, log_var = encode_posteriors(model, data.test_images)
    else:
        test, log_var = encode_means(model, data.test_images), None
    first = slice(0, train_images)
    return Codes(test, log_var, encode_means(model, data.train_images[first]), data.train_labels[first])


@torch.no_grad()
def reconstruct(model, images: torch.Tensor) -> torch.Tensor:
    """Give back the decoded codes of uint8 images as pixel probabilities."""
    model.eval()
    return model.decode(posterior_mean(model, to_float(images)))


@torch.no_grad()
def decode_in_batches(model, codes: torch.Tensor, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Give back the pixel probabilities of many codes, decoded a batch at a time."""
    model.eval()
    return torch.cat([model.decode(codes[b]) for b in in_order(len(codes), batch_size)])


@torch.no_grad()
def decode_logits(model, codes: torch.Tensor, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Give back the decoder's pixel logits of many codes, a batch at a time: (N, C, H, W)."""
    model.eval()
    return torch.cat([model.decoder(codes[b]) for b in in_order(len(codes), batch_size)])


def manifold_values(size: int = 15) -> np.ndarray:
    """Give back the article's grid values: equally spaced quantiles of N(0, 1), its
    `scipy.stats.norm.ppf(np.linspace(0.01, 0.99, size))` (torch's ndtri is the same function)."""
    return torch.special.ndtri(torch.linspace(0.01, 0.99, size, dtype=torch.float64)).numpy()


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


@dataclass
class ImportanceDraws:
    """k draws z ~ q(z|x) per image and the pixel log-likelihood of each: what IWAE bounds need."""

    z: torch.Tensor  # (k, N, D)
    mean: torch.Tensor  # (N, D)
    log_var: torch.Tensor  # (N, D)
    log_px_z: torch.Tensor  # (k, N): log p(x|z) under the given pixel likelihood


@torch.no_grad()
def importance_draws(
    model, images: torch.Tensor, k: int, likelihood, max_decodes: int = 1000
) -> ImportanceDraws:
    """Give back k posterior draws per image with log p(x|z), at most max_decodes decodings at once."""
    model.eval()
    chunks = []
    for batch in in_order(len(images), max(1, max_decodes // k)):
        x = to_float(images[batch])
        mean, log_var = model.encode(x)
        z = reparameterise(mean, log_var, torch.randn(k, *mean.shape, device=mean.device))  # (k, b, D)
        logits = model.decoder(z.flatten(0, 1)).view(k, *x.shape)
        targets = x.expand(k, *x.shape).flatten(0, 1)
        log_px_z = -likelihood.nats_per_image(logits.flatten(0, 1), targets).view(k, -1)
        chunks.append((z, mean, log_var, log_px_z))
    z, mean, log_var, log_px_z = zip(*chunks, strict=True)
    return ImportanceDraws(torch.cat(z, 1), torch.cat(mean), torch.cat(log_var), torch.cat(log_px_z, 1))


@torch.no_grad()
def interpolations(model, images: torch.Tensor, labels: torch.Tensor, pairs: int = 8, steps: int = 10):
    """Give back decoded straight lines between codes of test images of different classes.

    With fewer classes than pairs, later pairs join other images of the same classes.
    """
    present = labels.unique().tolist()
    per_class = -(-2 * pairs // len(present))  # enough images of each class for every line's ends
    members = [torch.nonzero(labels == c).flatten()[:per_class].tolist() for c in present]
    firsts = [m[0] for m in members] if len(present) >= pairs else _interleave(members)
    starts = [firsts[i % len(firsts)] for i in range(pairs)]
    ends = [firsts[(i + 1 + i // len(firsts)) % len(firsts)] for i in range(pairs)]
    codes = posterior_mean(model.eval(), to_float(images[starts + ends]))
    a, b = codes[:pairs], codes[pairs:]
    weights = torch.linspace(0, 1, steps, device=codes.device).view(1, steps, 1)
    path = a.unsqueeze(1) * (1 - weights) + b.unsqueeze(1) * weights  # (pairs, steps, D)
    return model.decode(path.flatten(0, 1))


def _interleave(lists: list[list[int]]) -> list[int]:
    """[[a1, a2], [b1], [c1, c2]] -> [a1, b1, c1, a2, c2]."""
    longest = max(len(items) for items in lists)
    return [items[i] for i in range(longest) for items in lists if i < len(items)]


@torch.no_grad()
def traversals(model, centre: torch.Tensor, dims: int = 16, steps: int = 9, span: float = 3.0):
    """Give back (decodings of each latent dimension varied in turn from -span to span around centre,
    how many dimensions)."""
    model.eval()
    dims = min(dims, model.latent_dim)
    offsets = torch.linspace(-span, span, steps, device=centre.device)
    codes = centre.repeat(dims, steps, 1)  # (dims, steps, D)
    for d in range(dims):
        codes[d, :, d] = centre[d] + offsets
    return model.decode(codes.flatten(0, 1)), dims


ATTRIBUTE_STRENGTHS = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)  # 0: the reconstruction


def attribute_vector(codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Give back the mean code of the images labelled 1 minus that of those labelled 0 (White 2016,
    "Sampling generative networks"): the direction in which the attribute grows."""
    labels = labels.to(codes.device)
    return codes[labels == 1].mean(0) - codes[labels == 0].mean(0)


@torch.no_grad()
def attribute_shifts(
    model, images: torch.Tensor, vector: torch.Tensor, strengths: tuple[float, ...] = ATTRIBUTE_STRENGTHS
) -> torch.Tensor:
    """Give back the decodings of code(image) + s * vector: a row per image, a column per strength s."""
    codes = encode_means(model, images)  # (N, D)
    offsets = torch.tensor(strengths, device=codes.device).view(1, -1, 1) * vector.view(1, 1, -1)
    return model.decode((codes.unsqueeze(1) + offsets).flatten(0, 1))
