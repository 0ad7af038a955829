"""Your own images, in ImageFolder layout: path/<class>/<image>."""

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch

from vae_lab.data.decoding import cached_images, decode_images, files_digest, torchvision_datasets
from vae_lab.data.images import ImageData, resolve_root
from vae_lab.errors import DataError

log = logging.getLogger("vae_lab.data")

IMAGE_FOLDER_CHANNELS = {1: "L", 3: "RGB"}  # channels -> PIL mode


def load_image_folder(
    path: Optional[str] = None,
    root: str = "data",
    limit: Optional[int] = None,
    image_size: int = 64,
    channels: int = 3,
    test_share: float = 0.1,
) -> ImageData:
    """Give back a folder of images in torchvision's ImageFolder layout (path/<class>/<image>).

    Each image is resized so that its shorter side is image_size, then centre-cropped to a square,
    once: the uint8 tensors are cached under <root>/image_folder_cache/, keyed by the folder, the
    sizes and every file's name, size and time. Labels are the sub-folders, in sorted order. A fixed
    share of each class (at least one image where a class has two) forms the test split.
    Longer than a screen: the checks of the folder come first, each with its own message.
    """
    if not path:
        raise DataError(
            "data.path is not set: point it at a folder of images with one sub-folder per class "
            "(path/cats/001.png, path/dogs/002.jpg; a single sub-folder is fine), e.g. "
            "`python -m vae_lab.train data=image_folder data.path=/my/images model=vae_celeba`."
        )
    folder = Path(path).expanduser().resolve()
    if channels not in IMAGE_FOLDER_CHANNELS:
        raise DataError(f"data.channels={channels} is not allowed: it must be 1 (grey) or 3 (RGB).")
    from torchvision.datasets.folder import IMG_EXTENSIONS

    try:
        # paths only, nothing decoded
        found = torchvision_datasets().ImageFolder(str(folder), loader=lambda file: file)
    except (FileNotFoundError, OSError) as error:
        raise DataError(
            f"data.path={path!r}: no images found in the ImageFolder layout ({error}). It needs one "
            f"sub-folder per class holding images ({', '.join(IMG_EXTENSIONS[:6])}, ...): "
            f"{folder}/<class>/<image>. A flat folder of images can go into one sub-folder."
        ) from error
    files = [Path(file) for file, _ in found.samples]
    labels = torch.tensor(found.targets, dtype=torch.long)
    key = {"image_size": image_size, "channels": channels, "files": files_digest(files)}
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    cache = resolve_root(root) / "image_folder_cache" / f"{folder.name}-{digest}_{channels}x{image_size}px.pt"
    prepare = _square(image_size, IMAGE_FOLDER_CHANNELS[channels])
    images = cached_images(cache, key, lambda: decode_images(files, prepare, channels, image_size))
    test = _test_indices(labels, test_share)
    train = torch.ones(len(labels), dtype=torch.bool)
    train[test] = False
    train_images, train_labels = images[train], labels[train]
    if limit is not None:
        train_images, train_labels = train_images[:limit], train_labels[:limit]
    return ImageData(
        train_images=train_images,
        train_labels=train_labels,
        test_images=images[test],
        test_labels=labels[test],
        class_names=list(found.classes),
    )


def _test_indices(labels: torch.Tensor, share: float) -> torch.Tensor:
    """Give back the sorted indices of the last round(share * n) images of each class (1 where n >= 2)."""
    chosen = []
    for label in labels.unique().tolist():
        members = torch.nonzero(labels == label).flatten()
        count = min(len(members) - 1, max(1, round(share * len(members))))
        chosen.append(members[len(members) - count :] if count > 0 else members[:0])
    return torch.cat(chosen).sort().values


def _square(image_size: int, mode: str) -> Callable:
    from torchvision.transforms.v2 import functional as F

    def prepare(image):
        image = F.resize(image.convert(mode), image_size, antialias=True)  # the shorter side
        return F.center_crop(image, [image_size, image_size])

    return prepare
