"""The typed config schema (Hydra ConfigStore) and the range checks that run before training.

The dataclasses catch misspelt keys and wrong types when Hydra composes the config;
`check_config` catches values of the right type that make no sense (a latent size of 0).
"""

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from vae_lab.data import BINARIZE_CHOICES
from vae_lab.errors import ConfigError


@dataclass
class DataSchema:
    """What every data set takes; each conf/data/*.yaml extends it with its own schema below."""

    _target_: str = MISSING
    root: str = "data"  # data sets (and caches) live under it; VAE_LAB_DATA wins
    limit: Optional[int] = None  # train on the first N training images


@dataclass
class IdxDataSchema(DataSchema):
    """MNIST and Fashion-MNIST (four IDX files)."""

    download: bool = True
    binarize: str = "none"  # none, or dynamic (Bernoulli-sampled pixels, the binarised-MNIST literature)


@dataclass
class CelebASchema(DataSchema):
    download: bool = True  # torchvision's Google Drive download; often fails (README: CelebA by hand)
    attribute: str = "Smiling"  # the labels: this column of list_attr_celeba.txt
    image_size: int = 64
    crop_size: int = 148  # centre crop of the 178x218 aligned faces, before the resize


@dataclass
class ImageFolderSchema(DataSchema):
    path: Optional[str] = None  # a folder in ImageFolder layout: path/<class>/<image>
    image_size: int = 64  # shorter side resized to it, then a centre square crop
    channels: int = 3  # 3: RGB, 1: grey
    test_share: float = 0.1  # of each class, for the test split


# conf/data/<name>.yaml lists its schema first in its defaults
DATA_SCHEMAS = {
    "idx_schema": IdxDataSchema,
    "celeba_schema": CelebASchema,
    "image_folder_schema": ImageFolderSchema,
}


@dataclass
class ModelSchema:
    _target_: str = MISSING
    latent_dim: int = 2
    encoder: Any = MISSING
    decoder: Any = MISSING


@dataclass
class OptimizerSchema:
    _target_: str = "torch.optim.Adam"
    lr: float = 1e-3
    foreach: Optional[bool] = None  # torch's multi-tensor update; None lets torch choose
    fused: Optional[bool] = None  # one fused kernel for the whole update (CPU and CUDA)


@dataclass
class TrainerSchema:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 250
    threads: Optional[int] = None  # torch.set_num_threads; None keeps torch's default
    progress: bool = True  # a tqdm bar per epoch
    channels_last: bool = True  # NHWC memory format for conv models: faster convolutions on CPU
    compile: bool = False  # torch.compile the training forward pass (its compile time counts in the run)
    precision: str = "fp32"  # fp32, or bf16: bfloat16 autocast of the forward pass
    keep_freed_memory: bool = True  # glibc malloc keeps freed memory for the next step (vae_lab/memory.py)
    resume: bool = False  # go on from the checkpoint in the run folder (hydra.run.dir=<that folder>)


@dataclass
class ClassifierSchema:
    epochs: int = 6
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    max_shift: int = 2  # random shifts of the training images, in pixels


@dataclass
class EvaluationSchema:
    enabled: bool = True  # the metrics of vae_lab/metrics.py after training, into summary.json
    iwae_k: int = 100  # importance samples per image; nested bounds at K = 1, 10, 100 from the same draws
    iwae_images: int = 1000  # a fixed, class-stratified subset of the test split
    mi_images: int = 1000  # images for the mutual information estimate
    knn_k: int = 5
    knn_train_images: int = 10000  # the first N training images' codes fit the kNN vote
    prior_samples: int = 10000  # decoded draws from N(0, I) judged by the classifier
    classifier: ClassifierSchema = field(default_factory=ClassifierSchema)


@dataclass
class Config:
    data: DataSchema = field(default_factory=DataSchema)
    model: ModelSchema = field(default_factory=ModelSchema)
    loss: Any = MISSING
    optimizer: OptimizerSchema = field(default_factory=OptimizerSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    evaluation: EvaluationSchema = field(default_factory=EvaluationSchema)
    logger: Any = MISSING  # conf/logger/*.yaml: where numbers and figures go besides the run folder
    seed: int = 0
    device: str = "auto"


def register_schemas() -> None:
    """Store the schema under the name conf/config.yaml lists first in its defaults."""
    ConfigStore.instance().store(name="config_schema", node=Config)
    for name, node in DATA_SCHEMAS.items():
        ConfigStore.instance().store(group="data", name=name, node=node)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _positive_number(value: Any) -> bool:
    return _is_number(value) and value > 0


def _non_negative_number(value: Any) -> bool:
    return _is_number(value) and value >= 0


def _optional_positive_int(value: Any) -> bool:
    return value is None or _positive_int(value)


def _device_name(value: Any) -> bool:
    return isinstance(value, str) and (value in ("auto", "cpu", "cuda") or value.startswith("cuda:"))


# key -> (test, what is allowed); keys absent from a config (a loss without kl_weight) are skipped
RULES = {
    "model.latent_dim": (_positive_int, "a positive integer"),
    "trainer.epochs": (_positive_int, "a positive integer"),
    "trainer.batch_size": (_positive_int, "a positive integer"),
    "trainer.eval_batch_size": (_positive_int, "a positive integer"),
    "trainer.threads": (_optional_positive_int, "a positive integer, or null for torch's default"),
    "optimizer.lr": (_positive_number, "a positive, finite number"),
    "loss.recon_weight": (_non_negative_number, "a non-negative, finite number"),
    "loss.kl_weight": (_non_negative_number, "a non-negative, finite number"),
    "data.limit": (_optional_positive_int, "a positive integer, or null for the whole training split"),
    "evaluation.iwae_k": (_positive_int, "a positive integer"),
    "evaluation.iwae_images": (_positive_int, "a positive integer"),
    "evaluation.mi_images": (_positive_int, "a positive integer"),
    "evaluation.knn_k": (_positive_int, "a positive integer"),
    "evaluation.knn_train_images": (_positive_int, "a positive integer"),
    "evaluation.prior_samples": (_positive_int, "a positive integer"),
    "evaluation.classifier.epochs": (_positive_int, "a positive integer"),
    "data.binarize": (lambda value: value in BINARIZE_CHOICES, f"one of {', '.join(BINARIZE_CHOICES)}"),
    "data.image_size": (lambda value: _is_int(value) and value >= 8, "an integer of at least 8 (pixels)"),
    "data.crop_size": (_positive_int, "a positive integer (pixels, at most 178 for CelebA)"),
    "data.channels": (lambda value: value in (1, 3), "1 (grey) or 3 (RGB)"),
    "data.test_share": (lambda value: _is_number(value) and 0 < value < 1, "a number between 0 and 1"),
    "trainer.precision": (lambda value: value in ("fp32", "bf16"), "one of fp32, bf16"),
    "seed": (_is_int, "an integer"),
    "device": (_device_name, "one of auto, cpu, cuda or cuda:N"),
}


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key whose value is out of range."""
    for key, (is_valid, allowed) in RULES.items():
        value = OmegaConf.select(cfg, key, default="<absent>")
        if value == "<absent>":
            continue
        if not is_valid(value):
            raise ConfigError(f"{key}={value!r} is not allowed: it must be {allowed}.")


def resolve_device(name: str) -> torch.device:
    """Give back the torch device for `auto`, `cpu`, `cuda` or `cuda:N`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device={name!r} was asked for, but torch sees no CUDA device: use device=cpu or auto."
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N.") from None
