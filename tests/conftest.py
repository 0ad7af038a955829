"""Shared fixtures: a tiny MNIST in the real IDX format, written by the tests themselves."""

import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "MNIST" / "raw"


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """IDX3: magic 0x00000803, count, rows, cols (big-endian int32), then uint8 pixels."""
    count, rows, cols = images.shape
    path.write_bytes(struct.pack(">iiii", 0x803, count, rows, cols) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """IDX1: magic 0x00000801, count (big-endian int32), then uint8 labels."""
    path.write_bytes(struct.pack(">ii", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


def fake_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose bright bar position depends on the label, plus a little noise: learnable."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count)
    images = rng.integers(0, 40, (count, 28, 28))
    for image, label in zip(images, labels, strict=True):
        image[2 + 2 * label : 5 + 2 * label, 4:24] = 255
    return images.astype(np.uint8), labels


def write_fake_mnist(root: Path, train_count: int = 256, test_count: int = 64) -> Path:
    """Write <root>/MNIST/raw/ with the four unpacked IDX files torchvision reads; give back root."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", train_count, 0), ("t10k", test_count, 1)):
        images, labels = fake_digits(count, seed)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture
def fake_mnist_root(tmp_path: Path) -> Path:
    return write_fake_mnist(tmp_path / "data")


@pytest.fixture(autouse=True)
def _small_and_deterministic(monkeypatch):
    monkeypatch.delenv("VAE_LAB_DATA", raising=False)
    torch.manual_seed(0)


# small evaluation settings for runs on tiny data: every metric still runs
FAST_EVALUATION = [
    "evaluation.iwae_k=10",
    "evaluation.iwae_images=50",
    "evaluation.mi_images=50",
    "evaluation.prior_samples=300",
    "evaluation.classifier.epochs=1",
]


def python() -> str:
    return sys.executable
