"""Data sets as uint8 tensors, kept whole on the training device, and batch iteration over them."""

import fcntl
import hashlib
import logging
import math
import os
import pickle
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from PIL import Image
from tqdm import tqdm

from vae_lab.errors import DataError, RunFolderError
from vae_lab.runs import write_atomically

log = logging.getLogger("vae_lab.data")

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
    """Give back MNIST, downloaded and unpacked into `root` by torchvision where it is missing.

    binarize="dynamic" (the binarised-MNIST literature's variant): training pixels are drawn from
    Bernoulli(x) afresh at every batch, and the test split is binarised once with a fixed seed.
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
    )


def load_fashion_mnist(
    root: str = "data", limit: Optional[int] = None, download: bool = True, binarize: str = "none"
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
    )


def torchvision_datasets():
    """Give back torchvision.datasets, imported only where a loader needs it: importing torchvision takes
    2.5 s here (it pulls in torch._dynamo), and a run on unpacked MNIST files never needs it."""
    from torchvision import datasets

    return datasets


def _load_idx_dataset(
    name: str,
    dataset_class: Callable,
    class_names: list[str],
    root: str,
    limit,
    download: bool,
    binarize: str,
    hint: str,
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
    if limit is not None:
        train_images, train_labels = train_images[:limit], train_labels[:limit]
    test_images = test_images.unsqueeze(1).contiguous()  # (N, 28, 28) -> (N, 1, 28, 28)
    return ImageData(
        train_images=train_images.unsqueeze(1).contiguous(),
        train_labels=train_labels.long(),
        test_images=binarize_once(test_images) if binarize == "dynamic" else test_images,
        test_labels=test_labels.long(),
        class_names=class_names,
        dynamic_binarization=binarize == "dynamic",
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


def file_md5(path: Path) -> str:
    """Give back the md5 sum of a file, as `md5sum` prints it."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


CELEBA_SPLITS = {"train": 0, "valid": 1, "test": 2}  # the codes of list_eval_partition.txt
CELEBA_PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
CELEBA_IMAGES = "img_align_celeba"  # the aligned-and-cropped faces, 178x218 JPEGs
# What a VAE on aligned faces reads, beside the images. torchvision also wants the identity, bounding-box
# and landmark files; vae_lab checks those only when torchvision downloads.
CELEBA_NEEDED = ("list_attr_celeba.txt", "list_eval_partition.txt")


def load_celeba(
    root: str = "data",
    limit: Optional[int] = None,
    download: bool = True,
    attribute: str = "Smiling",
    image_size: int = 64,
    crop_size: int = 148,
    require_all_images: bool = False,
) -> ImageData:
    """Give back CelebA's aligned faces (Liu et al. 2015) as RGB uint8 images, labelled by one attribute.

    Reads <root>/celeba/: img_align_celeba/ and the attribute and partition files, each checked
    against its official md5. A folder holding only some of the images (a download cut short, a
    subset) trains on those present, after a line saying per split how many are present and missing;
    require_all_images=true refuses it. Each face (178x218) is centre-cropped to crop_size x
    crop_size and resized to image_size x image_size once; the result is cached in
    <root>/celeba/vae_lab_cache/, named by both sizes (and the limit), so later runs start in seconds.
    Labels are 0/1 for the attribute (`Smiling`, `Male`, ... any column of list_attr_celeba.txt).
    Training uses the official train partition (its first `limit` faces present), every test number
    the official test partition.
    """
    datasets = torchvision_datasets()
    root_path = resolve_root(root)
    folder = root_path / datasets.CelebA.base_folder
    if download and not all((folder / name).exists() for name in (*CELEBA_NEEDED, CELEBA_IMAGES)):
        try:
            datasets.CelebA(str(root_path), split="all", target_type="attr", download=True)
        except Exception as error:  # RuntimeError (missing, corrupt, no gdown) or an OSError
            raise DataError(celeba_missing_message(folder, error)) from error
    check_celeba_files(folder)
    names, attribute_names, table = read_celeba_attributes(folder / "list_attr_celeba.txt")
    if attribute not in attribute_names:
        raise DataError(
            f"data.attribute={attribute!r} is not a CelebA attribute: choose one of "
            f"{', '.join(attribute_names)}."
        )
    labels = dict(zip(names, table[attribute], strict=True))
    partition = _read_celeba_partition(folder / "list_eval_partition.txt")
    present = celeba_images_present(folder, names, partition, require_all_images)
    prepare = _celeba_face(crop_size, image_size)
    splits = {}
    for split in ("train", "test"):
        chosen = present[split][:limit] if split == "train" and limit is not None else present[split]
        files = [folder / CELEBA_IMAGES / name for name in chosen]
        first = f"_first{limit}" if split == "train" and limit is not None else ""
        cache = folder / "vae_lab_cache" / f"{split}{first}_crop{crop_size}_{image_size}px.pt"
        key = {"crop_size": crop_size, "image_size": image_size, "files": _names_digest(files)}
        images = cached_images(cache, key, lambda files=files: decode_images(files, prepare, 3, image_size))
        splits[split] = (images, torch.tensor([labels[name] for name in chosen], dtype=torch.long))
    return ImageData(
        train_images=splits["train"][0],
        train_labels=splits["train"][1],
        test_images=splits["test"][0],
        test_labels=splits["test"][1],
        class_names=[f"not {attribute}", attribute],
    )


def check_celeba_files(folder: Path) -> None:
    """Raise DataError, listing every file with its state, unless the image folder and the attribute
    and partition files are there, each text file with its official md5."""
    official = {name: md5 for _, md5, name in torchvision_datasets().CelebA.file_list}
    problems = [f"{name} is missing" for name in CELEBA_NEEDED if not (folder / name).is_file()]
    problems += [
        f"{name}'s md5 differs from the official {official[name]}"
        for name in CELEBA_NEEDED
        if (folder / name).is_file() and file_md5(folder / name) != official[name]
    ]
    if not (folder / CELEBA_IMAGES).is_dir():
        problems.append(f"the image folder {CELEBA_IMAGES}/ is missing")
    if problems:
        raise DataError(celeba_missing_message(folder, "; ".join(problems)))


def read_celeba_attributes(path: Path) -> tuple[list[str], list[str], dict[str, list[int]]]:
    """Give back (image names, attribute names, {attribute: 0/1 per image}) from list_attr_celeba.txt
    (a count line, a header line of 40 names, then one row of -1/1 per image)."""
    lines = path.read_text().splitlines()
    attribute_names = lines[1].split()
    rows = [line.split() for line in lines[2:] if line.strip()]
    names = [row[0] for row in rows]
    table = {
        name: [int(row[column] == "1") for row in rows] for column, name in enumerate(attribute_names, 1)
    }
    return names, attribute_names, table


def celeba_images_present(
    folder: Path, names: list[str], partition: dict[str, int], require_all: bool
) -> dict[str, list[str]]:
    """Give back {split: the names of its images present in img_align_celeba/, in the official order}.

    Logs how many of each split are present and missing; raises DataError when the training or the
    test split has none, or when require_all and any is missing.
    """
    on_disk = set(os.listdir(folder / CELEBA_IMAGES))
    listed = {split: [n for n in names if partition.get(n) == code] for split, code in CELEBA_SPLITS.items()}
    present = {split: [n for n in split_names if n in on_disk] for split, split_names in listed.items()}
    counts = ", ".join(
        f"{split} {len(present[split]):,} of {len(listed[split]):,} present "
        f"({len(listed[split]) - len(present[split]):,} missing)"
        for split in CELEBA_SPLITS
    )
    missing = sum(len(listed[split]) - len(present[split]) for split in CELEBA_SPLITS)
    images = folder / CELEBA_IMAGES
    if missing and require_all:
        raise DataError(
            f"data.require_all_images=true, but {images} lacks {missing:,} of the {len(names):,} faces "
            f"that list_attr_celeba.txt lists ({counts}). Unzip the whole img_align_celeba.zip there, "
            "or set data.require_all_images=false to train on the faces present."
        )
    for split in ("train", "test"):
        if not present[split]:
            raise DataError(
                f"no face of CelebA's {split} split ({len(listed[split]):,} listed in "
                f"list_eval_partition.txt) is in {images} ({len(on_disk):,} files there): vae_lab trains "
                "on the train split and measures on the test split, so both need images."
            )
    if missing:
        log.info(f"CelebA in {folder}: {counts}; training on the faces present")
    else:
        log.info(f"CelebA in {folder}: all {len(names):,} faces present")
    return present


def celeba_missing_message(folder: Path, error: Exception | str) -> str:
    """Give back what is wrong with a CelebA folder and how to fill it by hand, checksums included."""
    reason = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else type(error).__name__
    lines = [
        f"CelebA could not be read from {folder}: {reason}.",
        f"vae_lab needs {CELEBA_IMAGES}/ (all of it, or the faces you have) and the two files marked "
        "'needed' below, with their official md5 sums. torchvision's download (data.download=true) goes "
        "through Google Drive, needs the gdown package and often fails on Drive's daily quota. To put "
        f"the data in place by hand, download from {CELEBA_PAGE} (Google Drive or Baidu links: Img/, "
        f"Anno/, Eval/) these files into {folder}/:",
    ]
    for _, md5, name in torchvision_datasets().CelebA.file_list:
        path = folder / name
        role = "needed" if name in CELEBA_NEEDED or name.endswith(".zip") else "optional"
        if name.endswith(".zip"):
            state = "" if (folder / CELEBA_IMAGES).is_dir() else "  <- not unpacked yet"
            unpacked = f"{folder}/{CELEBA_IMAGES}/000001.jpg ..."
            lines.append(f"  {name}  md5 {md5}  ({role}; unzip it there: {unpacked}){state}")
            continue
        if not path.is_file():
            state = "  <- missing"
        elif file_md5(path) != md5:
            state = "  <- present, but its md5 differs (truncated, or another mirror's version)"
        else:
            state = "  <- ok"
        lines.append(f"  {name}  md5 {md5}  ({role}){state}")
    lines.append(
        "Check them with `md5sum <file>`. Then point data.root or the VAE_LAB_DATA environment variable "
        f"at {folder.parent} (the folder holding celeba/)."
    )
    return "\n".join(lines)


def _read_celeba_partition(path: Path) -> dict[str, int]:
    """Give back {image file name: 0 train, 1 valid, 2 test} from list_eval_partition.txt."""
    pairs = (line.split() for line in path.read_text().splitlines() if line.strip())
    return {name: int(code) for name, code in pairs}


def _celeba_face(crop_size: int, image_size: int) -> Callable:
    from torchvision.transforms.v2 import functional as F

    def prepare(image):
        image = F.center_crop(image.convert("RGB"), [crop_size, crop_size])
        return F.resize(image, [image_size, image_size], antialias=True)

    return prepare


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
    key = {"image_size": image_size, "channels": channels, "files": _files_digest(files)}
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


def _names_digest(files: list[Path]) -> str:
    return hashlib.sha256("\n".join(file.name for file in files).encode()).hexdigest()


def _files_digest(files: list[Path]) -> str:
    """A checksum of the files' paths, sizes and modification times: any change rebuilds the cache."""
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


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
