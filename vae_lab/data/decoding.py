"""Reading data files: torchvision's data sets on demand, checksums, decoding image files on all cores,
and the cache of decoded images beside the data."""

import hashlib
import logging
import os
import pickle
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from vae_lab.errors import DataError, RunFolderError
from vae_lab.files import write_atomically

log = logging.getLogger("vae_lab.data")


def decode_images(files: list[Path], prepare: Callable, channels: int, image_size: int) -> torch.Tensor:
    """Give back the image files opened, passed through `prepare` (PIL -> PIL), as uint8 (N, C, H, W)."""
    from torchvision.transforms.v2 import functional as F

    images = torch.empty(len(files), channels, image_size, image_size, dtype=torch.uint8)

    def load(file: Path) -> torch.Tensor:
        try:
            with Image.open(file) as image:
                return F.pil_to_tensor(prepare(image))
        except OSError as error:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            raise DataError(f"{file} could not be read as an image: {error}") from error

    log.info(f"decoding {len(files):,} images to {channels}x{image_size}x{image_size} (once; then cached)")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PIL decodes without the GIL
        for start in tqdm(range(0, len(files), DECODE_CHUNK), desc="decoding images", leave=False):
            chunk = files[start : start + DECODE_CHUNK]
            images[start : start + len(chunk)] = torch.stack(list(pool.map(load, chunk)))
    return images


DECODE_CHUNK = 1024  # images handed to the thread pool at once


def cached_images(cache: Path, key: dict, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Give back the images stored in `cache` when they were made with `key`; else build and store them."""
    if cache.is_file():
        try:
            stored = torch.load(cache, mmap=True, weights_only=True)
        except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as error:
            log.warning(f"image cache {cache} is unreadable ({error}): building it again")
        else:
            if stored.get("key") == key:
                return stored["images"]
            log.info(f"image cache {cache} was made from other files or settings: building it again")
    images = build()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(cache, lambda temporary: torch.save({"key": key, "images": images}, temporary))
    except (OSError, RunFolderError) as error:  # a read-only data folder: decoded again next time
        log.warning(f"the images could not be cached in {cache} ({error}); they are decoded again next run")
    else:
        log.info(f"images cached in {cache}")
    return images


def names_digest(files: list[Path]) -> str:
    return hashlib.sha256("\n".join(file.name for file in files).encode()).hexdigest()


def files_digest(files: list[Path]) -> str:
    """A checksum of the files' paths, sizes and modification times: any change rebuilds the cache."""
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def torchvision_datasets():
    """Give back torchvision.datasets, imported only where a loader needs it: importing torchvision takes
    2.5 s here (it pulls in torch._dynamo), and a run on unpacked MNIST files never needs it."""
    from torchvision import datasets

    return datasets


def file_md5(path: Path) -> str:
    """Give back the md5 sum of a file, as `md5sum` prints it."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()
