"""Data sets as uint8 tensors, kept whole on the training device, and batch iteration over them."""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torchvision import datasets

from vae_lab.errors import DataError

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass
class ImageData:
    """A data set's two splits: images uint8 (N, C, H, W), labels int64 (N,)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]
    dynamic_binarization: bool = False  # draw training pixels from Bernoulli(x) afresh at every batch

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
        )

    def train_batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Give back training images at `indices` as floats in [0, 1]; binary under dynamic binarisation."""
        images = to_float(self.train_images[indices])
        return torch.bernoulli(images) if self.dynamic_binarization else images


def resolve_root(root: str) -> Path:
    """Give back the data root: the environment variable VAE_LAB_DATA wins over the config."""
    return Path(os.environ.get("VAE_LAB_DATA", root)).expanduser()


BINARIZE_CHOICES = ("none", "dynamic")


def binarize_once(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Give back uint8 images with each pixel drawn once from Bernoulli(x / 255), as 0 or 255."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.bernoulli(to_float(images), generator=generator) * 255).to(torch.uint8)


def load_mnist(
    root: str = "data", limit: Optional[int] = None, download: bool = True, binarize: str = "none"
) -> ImageData:
    """Give back MNIST through torchvision, downloading it into `root` when it is missing.

    binarize="dynamic" (the binarised-MNIST literature's variant): training pixels are drawn from
    Bernoulli(x) afresh at every batch, and the test split is binarised once with a fixed seed.
    """
    root_path = resolve_root(root)
    raw = root_path / "MNIST" / "raw"
    try:
        train = datasets.MNIST(str(root_path), train=True, download=download)
        test = datasets.MNIST(str(root_path), train=False, download=download)
    except Exception as error:  # torchvision raises RuntimeError, URLError, OSError or a parse error
        found = sorted(p.name for p in raw.iterdir()) if raw.is_dir() else []
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(
            f"MNIST could not be read from {raw} (found: {found or 'nothing'}): {reason}. "
            f"It needs the four official files {', '.join(f + '.gz' for f in MNIST_FILES)} there "
            "(or unpacked, without .gz). Download them from the MNIST site, copy them in by hand "
            "(`make data` copies ../shared/data/MNIST/raw/*.gz), or point data.root or the "
            "VAE_LAB_DATA environment variable at a folder holding MNIST/raw/."
        ) from error
    train_images, train_labels = train.data, train.targets
    if limit is not None:
        train_images, train_labels = train_images[:limit], train_labels[:limit]
    test_images = test.data.unsqueeze(1).contiguous()  # (N, 28, 28) -> (N, 1, 28, 28)
    return ImageData(
        train_images=train_images.unsqueeze(1).contiguous(),
        train_labels=train_labels.long(),
        test_images=binarize_once(test_images) if binarize == "dynamic" else test_images,
        test_labels=test.targets.long(),
        class_names=[str(digit) for digit in range(10)],
        dynamic_binarization=binarize == "dynamic",
    )


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
