"""The in-memory data set every loader gives back (uint8 tensors on the device) and batching over it."""

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from vae_lab.errors import ConfigError

log = logging.getLogger("vae_lab.data")


@dataclass
class ImageData:
    """A data set's two splits: images uint8 (N, C, H, W), labels int64 (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]
    dynamic_binarization: bool = False  # draw training pixels from Bernoulli(x) afresh at every batch
    validation_images: torch.Tensor | None = None  # held out of the training split (early stopping)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    def to(self, device: torch.device) -> "ImageData":
        return ImageData(
            self.train_images.to(device),
            self.train_labels.to(device),
            self.test_images.to(device),
            self.test_labels.to(device),
            self.class_names,
            self.dynamic_binarization,
            None if self.validation_images is None else self.validation_images.to(device),
        )

    def train_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Give back training images at `indices` as floats in [0, 1]; binary under dynamic binarisation."""
        images = to_float(self.train_images[indices])
        return torch.bernoulli(images) if self.dynamic_binarization else images


def resolve_root(root: str) -> Path:
    """Give back the data root: the environment variable VAE_LAB_DATA wins over the config."""
    return Path(os.environ.get("VAE_LAB_DATA", root)).expanduser()


BINARIZE_CHOICES = ("none", "dynamic")


def hold_out(
    images: torch.Tensor, labels: torch.Tensor, validation: int | None, limit: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Give back (training images, their labels, validation images): the last `validation` images of
    the training split held out (None: none), then the first `limit` of the rest to train on."""
    if validation is not None and not 0 < validation < len(images):
        raise ConfigError(
            f"data.validation={validation} cannot be held out of {len(images):,} training images: give "
            f"a number of images from 1 to {len(images) - 1:,} (e.g. 10000), or null for no validation split"
        )
    kept = len(images) - (validation or 0)
    held_out = images[kept:] if validation else None
    images, labels = images[:kept], labels[:kept]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels, held_out


def binarize_once(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Give back uint8 images with each pixel drawn once from Bernoulli(x / 255), as 0 or 255."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.bernoulli(to_float(images), generator=generator) * 255).to(torch.uint8)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Give back uint8 pixels as floats in [0, 1]."""
    return images.float().div_(255)


def shuffled_batches(
    num_images: int, batch_size: int, generator: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """Yield index tensors covering a fresh random permutation of the split."""
    order = torch.randperm(num_images, generator=generator).to(device)
    yield from order.split(batch_size)


def in_order(num_images: int, batch_size: int) -> Iterator[slice]:
    """Yield slices covering the split in order, for evaluation."""
    for start in range(0, num_images, batch_size):
        yield slice(start, min(start + batch_size, num_images))
