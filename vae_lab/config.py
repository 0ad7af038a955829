"""The typed config schema (Hydra ConfigStore): each key's type and allowed values, checked in one place.

The values themselves, defaults included, live in conf/*.yaml only. The dataclasses catch misspelt
keys and wrong types when Hydra composes the config; `check_config` walks them and checks each value
against the range its field declares (a latent size of 0 is an int, and still refused).
"""

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from vae_lab.errors import ConfigError
from vae_lab.speed.options import PRECISIONS


def _config_dir() -> Path:
    """conf/ of a checkout or editable install, else the copy an installed wheel holds (vae_lab/conf)."""
    checkout = Path(__file__).resolve().parent.parent / "conf"
    return checkout if (checkout / "config.yaml").is_file() else Path(__file__).resolve().parent / "conf"


CONF_DIR = _config_dir()  # absolute: works from any module or folder
BINARIZE_CHOICES = ("none", "dynamic")
WANDB_MODES = ("online", "offline", "disabled")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _device_name(value: Any) -> bool:
    return isinstance(value, str) and (value in ("auto", "cpu", "cuda") or value.startswith("cuda:"))


def checked(test: Callable[[Any], bool], allowed: str, optional: bool = False) -> Any:
    """A schema field with no default (the YAML gives it) whose value must pass `test` (or be null, if
    optional)."""
    return field(default=MISSING, metadata={"test": test, "allowed": allowed, "optional": optional})


def positive_int(optional_means: str = "") -> Any:
    allowed = "a positive integer" + (f", or null {optional_means}" if optional_means else "")
    return checked(lambda v: _is_int(v) and v > 0, allowed, optional=bool(optional_means))


def positive_number(optional_means: str = "") -> Any:
    allowed = "a positive, finite number" + (f", or null {optional_means}" if optional_means else "")
    return checked(lambda v: _is_number(v) and v > 0, allowed, optional=bool(optional_means))


def non_negative_number() -> Any:
    return checked(lambda v: _is_number(v) and v >= 0, "a non-negative, finite number")


def one_of(*choices: Any) -> Any:
    return checked(lambda v: v in choices, f"one of {', '.join(map(str, choices))}")


@dataclass
class DataSchema:
    """What every data set takes; each conf/data/*.yaml extends it with its own schema below."""

    _target_: str = MISSING
    root: str = MISSING  # data sets (and caches) live under it; VAE_LAB_DATA wins
    limit: Optional[int] = positive_int("for the whole training split")


@dataclass
class IdxDataSchema(DataSchema):
    """MNIST and Fashion-MNIST (four IDX files)."""

    download: bool = MISSING
    binarize: str = one_of(*BINARIZE_CHOICES)
    validation: Optional[int] = positive_int("for no validation split")  # the last N training images


@dataclass
class CelebASchema(DataSchema):
    download: bool = MISSING
    attribute: str = MISSING  # the labels: this column of list_attr_celeba.txt
    image_size: int = checked(lambda v: _is_int(v) and v >= 8, "an integer of at least 8 (pixels)")
    crop_size: int = positive_int()  # pixels, at most 178 for CelebA's aligned faces
    require_all_images: bool = MISSING  # refuse a folder that lacks any of the 202,599 faces


@dataclass
class ImageFolderSchema(DataSchema):
    path: Optional[str] = MISSING  # a folder in ImageFolder layout: path/<class>/<image>
    image_size: int = checked(lambda v: _is_int(v) and v >= 8, "an integer of at least 8 (pixels)")
    channels: int = one_of(1, 3)
    test_share: float = checked(lambda v: _is_number(v) and 0 < v < 1, "a number between 0 and 1")


@dataclass
class GaussianLikelihoodSchema:
    _target_: str = MISSING
    variance: float = positive_number()  # per pixel in [0, 1] units


@dataclass
class ReconstructionSchema:
    _target_: str = MISSING
    recon_weight: float = non_negative_number()
    likelihood: Any = MISSING


@dataclass
class KLSchema:
    _target_: str = MISSING
    kl_weight: float = non_negative_number()
    likelihood: Any = MISSING  # the reconstruction it logs (not optimised)


@dataclass
class ELBOSchema(ReconstructionSchema):
    kl_weight: float = non_negative_number()


@dataclass
class ImportanceWeightedSchema:
    _target_: str = MISSING
    samples: int = positive_int()  # k draws of q(z|x) per image
    bound: str = one_of("iwae", "elbo")
    likelihood: Any = MISSING


@dataclass
class OptimizerSchema:
    _target_: str = MISSING
    lr: float = positive_number()
    eps: Optional[float] = positive_number("for the constructor's default")
    foreach: Optional[bool] = MISSING
    fused: Optional[bool] = MISSING


@dataclass
class EarlyStoppingSchema:
    patience: Optional[int] = positive_int("for no early stopping")  # epochs (training/early_stopping.py)


@dataclass
class LrStagesSchema:
    base: Optional[int] = positive_int("for optimizer.lr throughout")  # stage i lasts base^i epochs
    decay: float = checked(lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]")


@dataclass
class TrainerSchema:
    epochs: int = positive_int()
    batch_size: int = positive_int()
    eval_batch_size: int = positive_int()
    threads: Optional[int] = positive_int("for torch's default")
    progress: bool = MISSING
    figures: bool = MISSING
    resume: bool = MISSING
    sync_batchnorm: bool = MISSING
    early_stopping: EarlyStoppingSchema = field(default_factory=EarlyStoppingSchema)
    # training/schedule.py: the KL warm-up and the learning-rate stages
    kl_warmup_epochs: Optional[int] = positive_int("for the loss's own KL weight throughout")
    lr_stages: LrStagesSchema = field(default_factory=LrStagesSchema)


@dataclass
class SpeedSchema:
    """conf/speed/*.yaml: vae_lab/speed/options.py's SpeedOptions."""

    fast_dropout: bool = MISSING
    fused_blocks: bool = MISSING
    fast_transpose: bool = MISSING
    one_channel_kernel: bool = MISSING
    channels_last: bool = MISSING
    compile: bool = MISSING
    precision: str = one_of(*PRECISIONS)
    keep_freed_memory: bool = MISSING


@dataclass
class ClassifierSchema:
    epochs: int = positive_int()
    batch_size: int = positive_int()
    lr: float = positive_number()
    seed: int = checked(_is_int, "an integer")
    max_shift: int = checked(lambda v: _is_int(v) and v >= 0, "a non-negative integer (pixels)")


@dataclass
class EvaluationSchema:
    enabled: bool = MISSING
    iwae_k: int = positive_int()
    iwae_images: Optional[int] = positive_int("for every test image")
    mi_images: Optional[int] = positive_int("for every test image")
    knn_k: int = positive_int()
    knn_train_images: int = positive_int()
    prior_samples: int = positive_int()
    coverage_k: int = positive_int()
    hole_draws: int = positive_int()
    quadrature_points: Optional[int] = checked(
        lambda v: _is_int(v) and v >= 5 and v % 2 == 1,
        "an odd integer of at least 5 (grid points per axis), or null for no quadrature",
        optional=True,
    )
    quadrature_span: float = positive_number()
    classifier: ClassifierSchema = field(default_factory=ClassifierSchema)


@dataclass
class NoLoggerSchema:
    _target_: str = MISSING


@dataclass
class TensorBoardLoggerSchema:
    _target_: str = MISSING
    flush_secs: int = positive_int()
    projector_images: int = checked(lambda v: _is_int(v) and v >= 0, "a non-negative integer (0: none)")
    hparams_metrics: list[str] = MISSING  # summary.json keys, as `python -m vae_lab.compare` reads them


@dataclass
class WandbLoggerSchema:
    _target_: str = MISSING
    project: str = checked(lambda v: isinstance(v, str) and v != "", "a W&B project name")
    entity: Optional[str] = MISSING
    mode: Optional[str] = checked(
        lambda v: v in WANDB_MODES, f"one of {', '.join(WANDB_MODES)}, or null for WANDB_MODE", optional=True
    )
    tags: list[str] = MISSING
    system_stats: bool = MISSING


@dataclass
class MlflowLoggerSchema:
    _target_: str = MISSING
    tracking_uri: str = checked(
        lambda v: isinstance(v, str) and v != "", "an MLflow tracking URI such as sqlite:///outputs/mlflow.db"
    )
    experiment: str = checked(lambda v: isinstance(v, str) and v != "", "an MLflow experiment name")


@dataclass
class MultiLoggerSchema:
    _target_: str = MISSING
    _recursive_: bool = MISSING
    backends: Any = MISSING  # name -> a logger's config (conf/logger/backends/*.yaml)


@dataclass
class Config:
    # conf/data/*.yaml: a built-in data set lists its typed schema below first in its defaults; a new one
    # may, or may pass its loader's own arguments untyped (the loader refuses what it does not take)
    data: Any = MISSING
    # conf/model/*.yaml: _target_ and exactly its constructor's arguments, whatever they are (a new
    # model's own included); the constructor refuses what it does not take. latent_dim is checked below.
    model: Any = MISSING
    loss: Any = MISSING  # conf/loss/*.yaml name their schema below
    optimizer: OptimizerSchema = field(default_factory=OptimizerSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    speed: SpeedSchema = field(default_factory=SpeedSchema)
    evaluation: EvaluationSchema = field(default_factory=EvaluationSchema)
    logger: Any = MISSING  # conf/logger/*.yaml: where numbers and figures go besides the run folder
    # a summary.json key (flattened with dots) the Hydra app returns, for a sweeper that searches
    # (hydra/sweeper=optuna); null: it returns nothing
    objective: Optional[str] = checked(
        lambda v: isinstance(v, str) and v != "",
        "a summary.json key such as metrics.iwae.nll_k100",
        optional=True,
    )
    seed: int = checked(_is_int, "an integer")
    device: str = checked(_device_name, "one of auto, cpu, cuda or cuda:N")


# group -> {name a conf/<group>/*.yaml lists first in its defaults: schema}
GROUP_SCHEMAS = {
    "data": {
        "idx_schema": IdxDataSchema,
        "celeba_schema": CelebASchema,
        "image_folder_schema": ImageFolderSchema,
    },
    "loss": {
        "recon_schema": ReconstructionSchema,
        "kl_schema": KLSchema,
        "elbo_schema": ELBOSchema,
        "iwae_schema": ImportanceWeightedSchema,
    },
    "loss/likelihood": {"gaussian_schema": GaussianLikelihoodSchema},
    "logger": {
        "none_schema": NoLoggerSchema,
        "tensorboard_schema": TensorBoardLoggerSchema,
        "wandb_schema": WandbLoggerSchema,
        "mlflow_schema": MlflowLoggerSchema,
        "multi_schema": MultiLoggerSchema,
    },
}


def register_schemas() -> None:
    """Store the schema under the name conf/config.yaml lists first in its defaults, and the groups'."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for group, schemas in GROUP_SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=group, name=name, node=node)


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key its schema does not know (a misspelling given with Hydra's
    `+`), or the first value outside the range its schema field declares."""
    for key, known in _unknown_keys(cfg, ""):
        close = difflib.get_close_matches(key.rpartition(".")[2], known, n=1)
        hint = f"did you mean {key.rpartition('.')[0]}.{close[0]}? " if close else ""
        raise ConfigError(
            f"{key} is not a key vae_lab knows: {hint}The keys there are {', '.join(known)} "
            "(`python -m vae_lab.train --cfg job` prints the whole config)."
        )
    for key, value, check in _checked_values(cfg, ""):
        if value is None and check["optional"]:
            continue
        if value is None or not check["test"](value):
            raise ConfigError(f"{key}={value!r} is not allowed: it must be {check['allowed']}.")
    latent_dim = OmegaConf.select(cfg, "model.latent_dim", default=None)
    if latent_dim is not None and not (_is_int(latent_dim) and latent_dim > 0):
        raise ConfigError(f"model.latent_dim={latent_dim!r} is not allowed: it must be a positive integer.")
    _check_warmup_has_a_kl_weight(cfg)
    objective = OmegaConf.select(cfg, "objective", default=None)
    if isinstance(objective, str) and objective.startswith("metrics.") and not cfg.evaluation.enabled:
        raise ConfigError(
            f"objective={objective} is a number of the evaluation, but evaluation.enabled=false: "
            "enable the evaluation, or name a training number such as test.total."
        )


def _check_warmup_has_a_kl_weight(cfg: DictConfig) -> None:
    """Refuse trainer.kl_warmup_epochs for a loss whose class takes no kl_weight (before anything is
    built: the class is imported, not made)."""
    import inspect

    from hydra.utils import get_class

    warmup = OmegaConf.select(cfg, "trainer.kl_warmup_epochs", default=None)
    target = OmegaConf.select(cfg, "loss._target_", default=None)
    if warmup is None or target is None or "kl_weight" in cfg.loss:
        return
    try:
        parameters = inspect.signature(get_class(target)).parameters
    except (ImportError, ValueError, TypeError):
        return  # an unknown class is refused, in its own words, where it is built
    if "kl_weight" not in parameters:
        raise ConfigError(
            f"trainer.kl_warmup_epochs={warmup} lowers a loss's kl_weight, and {target.rpartition('.')[2]} "
            "has none: use a loss with a KL term (loss=elbo), or trainer.kl_warmup_epochs=null"
        )


def _unknown_keys(node: DictConfig, prefix: str):
    """Yield (key, the schema's keys) for every key of a typed node that its schema does not declare."""
    schema = OmegaConf.get_type(node)
    known = [f.name for f in fields(schema)] if is_dataclass(schema) else None
    for name in node.keys():
        if known is not None and name not in known:
            yield f"{prefix}{name}", [key for key in known if not key.startswith("_")]
            continue
        child = node._get_node(name)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            yield from _unknown_keys(child, f"{prefix}{name}.")


def _checked_values(node: DictConfig, prefix: str):
    """Yield (key, value, check) for every field with a check in the typed nodes under node."""
    schema = OmegaConf.get_type(node)
    checks = (
        {f.name: f.metadata for f in fields(schema) if "test" in f.metadata} if is_dataclass(schema) else {}
    )
    for name in node.keys():
        key = f"{prefix}{name}"
        if name in checks:
            yield key, OmegaConf.select(node, str(name)), checks[name]
        else:
            child = node._get_node(name)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                yield from _checked_values(child, f"{key}.")
