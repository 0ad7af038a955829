"""A small MNIST classifier that vae_lab trains itself, to judge decoded samples.

    python -m vae_lab.evaluation.classifier [data.root=... evaluation.classifier.epochs=...]

trains it (or finds it cached) and logs its test accuracy.

It is cached under <data root>/classifiers/, named by a checksum of its settings and of the
training images, and reused by every run's evaluation.
"""

import hashlib
import json
import logging
import time
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from vae_lab.config import CONF_DIR, register_schemas
from vae_lab.data import ImageData, in_order, resolve_root, shuffled_batches, to_float
from vae_lab.errors import VaeLabError
from vae_lab.evaluation.inference import BATCH_SIZE
from vae_lab.files import write_atomically
from vae_lab.speed import memory

log = logging.getLogger("vae_lab.evaluation.classifier")
register_schemas()


class DigitClassifier(nn.Module):
    """Two conv blocks (with BatchNorm) and a 128-unit layer whose activations are the Frechet features."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 64, 7, 7)
            nn.Flatten(),
            nn.Linear(64 * (image_size // 4) ** 2, 128),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(128, classes))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))


@torch.no_grad()
def classify(classifier: DigitClassifier, images: torch.Tensor, batch_size: int = BATCH_SIZE):
    """Give back (p(y|x) (N, C), features (N, 128)) for float images in [0, 1] or uint8 images.

    uint8 images become floats one batch at a time, so a large split never exists in float32 at once.
    """
    classifier.eval()
    probabilities, features = [], []
    for batch in in_order(len(images), batch_size):
        x = images[batch]
        hidden = classifier.features(to_float(x) if x.dtype == torch.uint8 else x)
        features.append(hidden)
        probabilities.append(classifier.head(hidden).softmax(1))
    return torch.cat(probabilities), torch.cat(features)


def accuracy(classifier: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    probabilities, _ = classify(classifier, images)
    return (probabilities.argmax(1) == labels).double().mean().item()


def random_shifts(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Give back each image moved by its own whole-pixel offset of at most max_shift, zeros filled in."""
    count = len(images)
    shifts = torch.randint(-max_shift, max_shift + 1, (count, 2), generator=generator).to(images.device)
    theta = torch.zeros(count, 2, 3, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = (
        -2 * shifts / torch.tensor(images.shape[-1:-3:-1], device=images.device)
    )  # pixels -> [-1, 1]
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return nn.functional.grid_sample(images, grid, mode="nearest", align_corners=False)


def train_classifier(
    data: ImageData,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    max_shift: int = 2,
    progress: bool = True,
):
    """Give back a classifier trained on the training split (random shifts, cosine learning rate),
    and its test accuracy. Each epoch ends with a log line (its mean loss and seconds), so that a
    run without progress bars shows how far it is. As training's steps do, it works in channels_last
    (NHWC: on a 2-core CPU a step in batches of 128 took 38 against 50 ms contiguous, and classifying
    10,000 images 1.5 to 2.0 against 3.8 to 4.0 s) and keeps its freed memory (vae_lab/speed/memory.py),
    which it hands back at the end."""
    memory.keep_freed_memory()
    torch.manual_seed(seed)
    classifier = DigitClassifier(data.image_shape[0], data.image_shape[1], len(data.class_names))
    classifier.to(data.train_images.device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=lr)
    steps = epochs * -(-len(data.train_images) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        classifier.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=data.train_images.device)  # on the device: no sync per step
        batches = shuffled_batches(len(data.train_images), batch_size, generator, data.train_images.device)
        for indices in tqdm(
            list(batches),
            desc=f"classifier epoch {epoch}/{epochs}",
            leave=False,
            disable=None if progress else True,
        ):
            images = random_shifts(to_float(data.train_images[indices]), max_shift, generator)
            images = images.contiguous(memory_format=torch.channels_last)
            loss = nn.functional.cross_entropy(classifier(images), data.train_labels[indices])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach() * len(indices)
        mean_loss = loss_sum.item() / len(data.train_images)
        log.info(
            f"classifier epoch {epoch}/{epochs}: training loss {mean_loss:.4f}, "
            f"{time.perf_counter() - started:.0f} s"
        )
    memory.hand_back_freed_memory()
    return classifier, accuracy(classifier, data.test_images, data.test_labels)


def cache_path(data: ImageData, data_root: str, settings: dict) -> Path:
    """Give back where the classifier for these settings, this architecture and these images lives."""
    architecture = repr(DigitClassifier(data.image_shape[0], data.image_shape[1], len(data.class_names)))
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode() + architecture.encode())
    digest.update(data.train_images.cpu().numpy().tobytes())
    digest.update(data.train_labels.cpu().numpy().tobytes())
    return resolve_root(data_root) / "classifiers" / f"digit_classifier-{digest.hexdigest()[:16]}.pt"


def load_or_train(data: ImageData, data_root: str, settings: DictConfig | dict, progress: bool = True):
    """Give back (classifier, its test accuracy, cache file), training it only when not cached."""
    settings = OmegaConf.to_container(settings) if isinstance(settings, DictConfig) else dict(settings)
    path = cache_path(data, data_root, settings)
    classifier = DigitClassifier(data.image_shape[0], data.image_shape[1], len(data.class_names))
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        classifier.load_state_dict(state["model"])
        classifier.to(data.train_images.device, memory_format=torch.channels_last)  # as it was trained
        return classifier.eval(), state["test_accuracy"], path
    classes = f"{len(data.class_names)} classes: {', '.join(data.class_names[:10])}"
    log.info(f"training the sample metrics' classifier ({classes}; {settings}); cached at {path}")
    classifier, test_accuracy = train_classifier(data, progress=progress, **settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(
        path,
        lambda tmp: torch.save(
            {"model": classifier.state_dict(), "test_accuracy": test_accuracy, "settings": settings}, tmp
        ),
    )
    log.info(f"classifier test accuracy {test_accuracy:.4f}")
    return classifier.eval(), test_accuracy, path


def load_or_train_for_config(cfg: DictConfig):
    """Load cfg.data, then load_or_train its classifier with cfg.evaluation.classifier; give back
    (data, classifier, test accuracy, cache path)."""
    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    data = instantiate(cfg.data).to(device)
    return data, *load_or_train(data, cfg.data.root, cfg.evaluation.classifier, cfg.trainer.progress)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Train (or find cached) the classifier for cfg.data with cfg.evaluation.classifier; log its accuracy."""
    try:
        data, _, test_accuracy, path = load_or_train_for_config(cfg)
    except VaeLabError as error:
        log.error(str(error))
        raise SystemExit(1) from None
    log.info(f"classifier: test accuracy {test_accuracy:.4f} ({len(data.test_images)} test images), {path}")


if __name__ == "__main__":
    main()
