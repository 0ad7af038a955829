"""MNIST and Fashion-MNIST: the four IDX files, unpacked by torchvision where missing, checked, read."""

import fcntl
import logging
import math
import struct
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import torch

from vae_lab.data.decoding import file_md5, torchvision_datasets
from vae_lab.data.images import ImageData, binarize_once, hold_out, resolve_root
from vae_lab.errors import DataError

log = logging.getLogger("vae_lab.data")

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def load_mnist(
    root: str = "data",
    limit: Optional[int] = None,
    download: bool = True,
    binarize: str = "none",
    validation: Optional[int] = None,
) -> ImageData:
    """Give back MNIST, downloaded and unpacked into `root` by torchvision where it is missing.

    binarize="dynamic" (the binarised-MNIST literature's variant): training pixels are drawn from
    Bernoulli(x) afresh at every batch, and the test split is binarised once with a fixed seed.
    validation=N holds the last N training images out (binarised once, as the test split).
    """
    hint = (
        "Download them from the MNIST site, copy them in by hand "
        "(`make data` copies ../shared/data/MNIST/raw/*.gz)"
    )
    return _load_idx_dataset(
        "MNIST",
        lambda: torchvision_datasets().MNIST,
        [str(d) for d in range(10)],
        root,
        limit,
        download,
        binarize,
        hint,
        validation,
    )


def load_fashion_mnist(
    root: str = "data",
    limit: Optional[int] = None,
    download: bool = True,
    binarize: str = "none",
    validation: Optional[int] = None,
) -> ImageData:
    """Give back Fashion-MNIST (Xiao et al. 2017): the MNIST pipeline, clothes' names."""
    hint = "Download them from https://github.com/zalandoresearch/fashion-mnist (data/fashion/), copy them in"
    dataset_class = torchvision_datasets().FashionMNIST
    return _load_idx_dataset(
        "FashionMNIST",
        lambda: dataset_class,
        list(dataset_class.classes),
        root,
        limit,
        download,
        binarize,
        hint,
        validation,
    )


def _load_idx_dataset(
    name: str,
    dataset_class: Callable,
    class_names: list[str],
    root: str,
    limit,
    download: bool,
    binarize: str,
    hint: str,
    validation: Optional[int] = None,
) -> ImageData:
    """Give back an MNIST-format data set (four IDX files under <root>/<name>/raw/) as ImageData.

    torchvision's dataset class (given by `dataset_class()`) downloads the archives, checks their md5
    sums and unpacks them where the unpacked files are missing; vae_lab reads the unpacked files.
    """
    raw = resolve_root(root) / name / "raw"
    with unpacking_lock(raw if download else None):  # jobs of a sweep unpack one at a time
        if any((raw / f"{file}.gz").is_file() for file in MNIST_FILES):
            verify_archives(raw, dataset_class().resources, hint)
        try:
            if download:
                drop_partly_unpacked(raw)
                if not all((raw / file).is_file() for file in MNIST_FILES):
                    dataset_class()(str(raw.parent.parent), train=True, download=True)  # all four files
            train_images, train_labels, test_images, test_labels = (
                read_idx(raw / file) for file in MNIST_FILES
            )
        except (
            Exception
        ) as error:  # torchvision raises RuntimeError, URLError or OSError; read_idx ValueError
            found = (
                sorted(p.name for p in raw.iterdir() if not p.name.startswith(".")) if raw.is_dir() else []
            )
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DataError(
                f"{name} could not be read from {raw} (found: {found or 'nothing'}): {reason}. "
                f"It needs the four official files {', '.join(f + '.gz' for f in MNIST_FILES)} there "
                f"(or unpacked, without .gz). {hint}, or point data.root or the "
                f"VAE_LAB_DATA environment variable at a folder holding {name}/raw/."
            ) from error
    train_images, train_labels, validation_images = hold_out(train_images, train_labels, validation, limit)
    test_images = test_images.unsqueeze(1).contiguous()  # (N, 28, 28) -> (N, 1, 28, 28)
    if validation_images is not None:
        validation_images = validation_images.unsqueeze(1).contiguous()
        if binarize == "dynamic":
            validation_images = binarize_once(validation_images, seed=1)  # not the test split's draws
    return ImageData(
        train_images=train_images.unsqueeze(1).contiguous(),
        train_labels=train_labels.long(),
        test_images=binarize_once(test_images) if binarize == "dynamic" else test_images,
        test_labels=test_labels.long(),
        class_names=class_names,
        dynamic_binarization=binarize == "dynamic",
        validation_images=validation_images,
    )


def read_idx(path: Path) -> torch.Tensor:
    """Give back an IDX file of uint8 values (MNIST's format: a magic number, the sizes, the values) as a
    uint8 tensor of the shape its header names; ValueError where the file is not whole."""
    if not path.is_file():
        raise ValueError(f"{path.name} is missing")
    content = path.read_bytes()
    header = _idx_header(content[: 4 + 4 * 255])
    if header is None:
        raise ValueError(
            f"{path.name} is not an IDX file of bytes (it starts {content[:4].hex() or 'empty'})"
        )
    shape, offset, expected = header
    if len(content) != expected:
        raise ValueError(
            f"{path.name} holds {len(content):,} bytes; its header, sizes {list(shape)}, needs {expected:,}"
        )
    return torch.frombuffer(bytearray(content), dtype=torch.uint8, offset=offset).view(shape)


def _idx_header(start: bytes) -> Optional[tuple[tuple[int, ...], int, int]]:
    """Give back (sizes, header length, whole file's length) from the first bytes of an IDX file of
    uint8 values, or None."""
    if len(start) < 4 or start[:3] != b"\x00\x00\x08":
        return None
    dims = start[3]
    if len(start) < 4 + 4 * dims:
        return None
    sizes = struct.unpack(f">{dims}i", start[4 : 4 + 4 * dims])
    return sizes, 4 + 4 * dims, 4 + 4 * dims + math.prod(sizes)


@contextmanager
def unpacking_lock(raw: Optional[Path]):
    """Hold an exclusive lock on raw/ while torchvision unpacks its archives there and they are read.

    torchvision writes each unpacked file in place: without the lock, a second process (a sweep's job,
    a bench variant) that starts meanwhile finds the file and reads it half-written. No lock (a
    read-only folder, or raw=None) lets the caller go on without one.
    """
    handle = None
    if raw is not None:
        try:
            raw.mkdir(parents=True, exist_ok=True)
            handle = open(raw / ".unpacking.lock", "a")
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            handle = None
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # closing releases the lock


def drop_partly_unpacked(raw: Path) -> None:
    """Delete each unpacked IDX file in raw/ shorter or longer than its own header says, when its .gz
    is beside it: a process killed while unpacking left it so, and torchvision unpacks it again."""
    for path in sorted(raw.glob("*-ubyte")):
        if (raw / f"{path.name}.gz").is_file() and not idx_file_is_whole(path):
            log.warning("%s is not whole (a process stopped while unpacking it?): unpacking it again", path)
            path.unlink()


def idx_file_is_whole(path: Path) -> bool:
    """Whether an IDX file of uint8 values (MNIST's format) holds exactly the bytes its header names."""
    with open(path, "rb") as file:
        header = _idx_header(file.read(4 + 4 * 255))
    return header is not None and path.stat().st_size == header[2]


def verify_archives(raw: Path, resources: list[tuple[str, str]], hint: str) -> None:
    """Raise DataError when an official .gz file in raw/ fails the md5 sum torchvision lists for it.

    torchvision checks the sums only when it downloads or unpacks; a damaged archive beside files it
    unpacked before would go unnoticed. (Unpacked files without their archives cannot be checked.)
    """
    damaged = []
    for url, md5 in resources:
        path = raw / url.rpartition("/")[2]
        if path.is_file() and (actual := file_md5(path)) != md5:
            damaged.append(f"{path.name} (md5 {actual}, {path.stat().st_size:,} bytes; expected md5 {md5})")
    if damaged:
        raise DataError(
            f"{len(damaged)} file(s) in {raw} fail their official checksum, so they are truncated or "
            f"corrupt: {'; '.join(damaged)}. Delete them and the unpacked files beside them, then get "
            f"them again: {hint}."
        )
