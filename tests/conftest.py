"""Shared fixtures: tiny data sets in their real on-disk formats (MNIST and Fashion-MNIST IDX files, a CelebA
folder, an image folder of PNGs), written by the tests themselves; the C kernels' build as on a new
machine."""

import os
import shutil
import struct
import sys
import time
from pathlib import Path

# each of pytest-xdist's workers, and every command it starts, takes its share of the cores: torch's
# default (all of them in each) makes the workers' threads wait on each other
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    CORES_PER_WORKER = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(CORES_PER_WORKER))

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from vae_lab.config import check_config, register_schemas
from vae_lab.files import file_lock
from vae_lab.speed import SpeedOptions, speed_up

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "MNIST" / "raw"


def compose_run(*overrides: str):
    """The config `python -m vae_lab.train <overrides>` runs with, checked as it checks it."""
    register_schemas()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    check_config(cfg)
    return cfg


def run_in_process(run_dir: Path, *overrides: str, resume: bool = False):
    """What `python -m vae_lab.train <overrides> hydra.run.dir=<run_dir>` does, in this process (where a
    test's monkeypatch reaches): the config checked and read once, the folder's checkpoint gone on from
    where resume is set; give back the run's summary."""
    from vae_lab.settings import read_settings
    from vae_lab.train import run
    from vae_lab.training.checkpoint import resume_point

    run_dir.mkdir(parents=True, exist_ok=True)
    settings = read_settings(compose_run(*overrides), run_dir)
    checkpoint = resume_point(run_dir, settings.resume_key, settings.speed, resume, must_exist=resume)
    return run(settings, run_dir, checkpoint=checkpoint)


def build_run(cfg, device: str = "cpu"):
    """The (model, loss, optimizer) that `python -m vae_lab.train` builds of a composed config."""
    from vae_lab.training.build import build

    return build(cfg.model, cfg.loss, cfg.optimizer, torch.device(device))


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


def write_fake_mnist(
    root: Path, train_count: int = 256, test_count: int = 64, folder: str = "MNIST", seeds=(0, 1)
) -> Path:
    """Write <root>/<folder>/raw/ with the four unpacked IDX files torchvision reads; give back root."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", train_count, seeds[0]), ("t10k", test_count, seeds[1])):
        images, labels = fake_digits(count, seed)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def made_once(tmp_path_factory, name: str, make) -> Path:
    """The folder `name`, made by `make(folder)` once in the whole test session: pytest-xdist's workers
    share it (the first to ask makes it, the others wait for it). Tests read it, or copy it to change it."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base  # above each worker's folder
    folder, made = shared / name, shared / f"{name}.made"
    with file_lock(shared / f"{name}.lock"):
        if not made.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed attempt left
            make(folder)
            made.touch()
    return folder


@pytest.fixture(scope="session")
def real_mnist_root(tmp_path_factory) -> Path:
    """A data root holding a copy of the official MNIST archives of ../shared/data (torchvision unpacks
    next to them, and ../shared is read-only), one for the session; tests that use it skip where the
    archives are absent."""
    from vae_lab.data import MNIST_FILES

    def copy(root: Path) -> None:
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for name in MNIST_FILES:
            shutil.copy(SHARED_MNIST / f"{name}.gz", raw)

    return made_once(tmp_path_factory, "real_mnist", copy)


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
    "evaluation.hole_draws=500",
    "evaluation.quadrature_points=41",
    "evaluation.classifier.epochs=1",
]


def python() -> str:
    return sys.executable


def wait_until(condition, process, what: str, timeout_s: float = 120) -> None:
    """Poll `condition` until it holds; fail where `process` (a subprocess.Popen or a warm_start.Popen)
    ends first or `what` takes too long."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


needs_compiler = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build the kernels")


AUTO = SpeedOptions(
    **{
        **SpeedOptions().as_dict(),
        "fast_dropout": True,
        "fused_blocks": True,
        "fast_transpose": True,
        "one_channel_kernel": True,
    }
)  # conf/speed/auto.yaml's layers


def sped_up(module: torch.nn.Module, **options) -> torch.nn.Module:
    """The module with conf/speed/auto.yaml's faster layers swapped in, less those options set to False."""
    return speed_up(module, SpeedOptions(**{**AUTO.as_dict(), **options}))


def channels_last(*shape) -> torch.Tensor:
    """A random batch in the memory layout the C kernels run on."""
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


@pytest.fixture
def fresh_kernels(tmp_path, monkeypatch):
    """The kernels' build as on a new machine: an empty cache, nothing loaded yet in this process."""
    from vae_lab.speed import kernels

    monkeypatch.setenv("VAE_LAB_CACHE", str(tmp_path / "cache"))
    kernels.cpu_kernels.cache_clear()
    yield tmp_path / "cache"
    kernels.cpu_kernels.cache_clear()


def write_fake_fashion_mnist(root: Path, train_count: int = 256, test_count: int = 64) -> Path:
    """Write <root>/FashionMNIST/raw/ with the four unpacked IDX files torchvision reads; give back root."""
    return write_fake_mnist(root, train_count, test_count, folder="FashionMNIST", seeds=(2, 3))


# the 40 columns of CelebA's list_attr_celeba.txt, in its order
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()


def fake_face(smiling: bool, male: bool, rng: np.random.Generator) -> np.ndarray:
    """A 218x178 RGB 'face': noise, a white band above the usual 148-pixel centre crop (which must cut it
    away), a centre square red for Smiling or blue otherwise, and a green corner of the crop for Male."""
    image = rng.integers(0, 60, (218, 178, 3)).astype(np.uint8)
    image[:30] = 255  # rows 0-29: outside the crop, which starts at row (218 - 148) // 2 = 35
    image[79:139, 59:119] = (220, 30, 30) if smiling else (30, 30, 220)  # the 60x60 centre
    if male:
        image[40:70, 20:50, 1] = 230
    return image


def write_fake_celeba(root: Path, partition: tuple[int, int, int] = (24, 4, 8), seed: int = 0) -> Path:
    """Write <root>/celeba/ in torchvision's layout: img_align_celeba/*.jpg (178x218) and the five text
    files in the official formats (attributes -1/1 under a count and a header line); give back root."""
    folder = root / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    count = sum(partition)
    names = [f"{index:06d}.jpg" for index in range(1, count + 1)]
    codes = [code for code, size in enumerate(partition) for _ in range(size)]
    attributes = np.where(rng.random((count, len(CELEBA_ATTRIBUTES))) < 0.5, 1, -1)
    attributes[:, CELEBA_ATTRIBUTES.index("Smiling")] = np.where(np.arange(count) % 2 == 0, 1, -1)
    smiling, male = (attributes[:, CELEBA_ATTRIBUTES.index(name)] == 1 for name in ("Smiling", "Male"))
    for name, is_smiling, is_male in zip(names, smiling, male, strict=True):
        Image.fromarray(fake_face(is_smiling, is_male, rng)).save(images / name, quality=95)

    def rows(values) -> str:
        return "".join(
            f"{name} {' '.join(f'{v:2d}' for v in row)}\n" for name, row in zip(names, values, strict=True)
        )

    (folder / "list_attr_celeba.txt").write_text(
        f"{count}\n{' '.join(CELEBA_ATTRIBUTES)} \n" + rows(attributes)
    )
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{n} {c}\n" for n, c in zip(names, codes, strict=True))
    )
    (folder / "identity_CelebA.txt").write_text("".join(f"{n} {i % 7 + 1}\n" for i, n in enumerate(names)))
    boxes = rng.integers(50, 200, (count, 4))
    (folder / "list_bbox_celeba.txt").write_text(f"{count}\nimage_id x_1 y_1 width height\n" + rows(boxes))
    landmark_names = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y"
    landmark_names += " rightmouth_x rightmouth_y"
    landmarks = rng.integers(60, 160, (count, 10))
    (folder / "list_landmarks_align_celeba.txt").write_text(f"{count}\n{landmark_names}\n" + rows(landmarks))
    return root


def trust_fake_celeba(monkeypatch, root: Path) -> None:
    """Make torchvision's CelebA accept the fake files: its md5 list, with the fakes' sums in place of
    the real ones (which no fake can match); everything else about its integrity check stays."""
    from torchvision import datasets
    from torchvision.datasets.utils import calculate_md5

    folder = root / "celeba"
    fake_list = [
        (file_id, md5 if name.endswith(".zip") else calculate_md5(str(folder / name)), name)
        for file_id, md5, name in datasets.CelebA.file_list
    ]
    monkeypatch.setattr(datasets.CelebA, "file_list", fake_list)


def write_image_folder(
    folder: Path, classes: tuple[str, ...] = ("circles", "squares", "stripes"), per_class: int = 12
) -> Path:
    """Write <folder>/<class>/<n>.png: non-square RGB images, a colour per class; give back folder."""
    rng = np.random.default_rng(5)
    for index, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for number in range(per_class):
            image = rng.integers(0, 50, (40, 52, 3)).astype(np.uint8)
            image[10:30, 16:36, index % 3] = 240
            Image.fromarray(image).save(folder / name / f"{number:03d}.png")
    return folder
