"""CelebA's aligned faces (Liu et al. 2015), labelled by one attribute, checked against the official files."""

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch

from vae_lab.data.decoding import cached_images, decode_images, file_md5, names_digest, torchvision_datasets
from vae_lab.data.images import ImageData, resolve_root
from vae_lab.errors import DataError

log = logging.getLogger("vae_lab.data")

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
    Longer than a screen: the checks of the folder come first, each with its own message.
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
    labels = read_celeba_attribute(folder / "list_attr_celeba.txt", attribute)
    names = list(labels)
    partition = _read_celeba_partition(folder / "list_eval_partition.txt")
    present = celeba_images_present(folder, names, partition, require_all_images)
    prepare = _celeba_face(crop_size, image_size)
    splits = {}
    for split in ("train", "test"):
        chosen = present[split][:limit] if split == "train" and limit is not None else present[split]
        files = [folder / CELEBA_IMAGES / name for name in chosen]
        first = f"_first{limit}" if split == "train" and limit is not None else ""
        cache = folder / "vae_lab_cache" / f"{split}{first}_crop{crop_size}_{image_size}px.pt"
        key = {"crop_size": crop_size, "image_size": image_size, "files": names_digest(files)}
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


def read_celeba_attribute(path: Path, attribute: str) -> dict[str, int]:
    """Give back {image name: 0/1}, in the file's order, for one column of list_attr_celeba.txt (a count
    line, a header line of 40 names, then one row of -1/1 per image). Only that column is turned into
    numbers: all 40 of the 202,599 rows take seconds."""
    lines = path.read_text().splitlines()
    attribute_names = lines[1].split()
    if attribute not in attribute_names:
        raise DataError(
            f"data.attribute={attribute!r} is not a CelebA attribute: choose one of "
            f"{', '.join(attribute_names)}."
        )
    column = attribute_names.index(attribute) + 1
    rows = (line.split() for line in lines[2:] if line.strip())
    return {row[0]: int(row[column] == "1") for row in rows}


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
