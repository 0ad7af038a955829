"""Where a run's numbers and figures go besides its own files: nowhere (the default), TensorBoard,
Weights & Biases, MLflow, or several of them at once (docs/trackers.md).

Each logger is built by Hydra from conf/logger/*.yaml, given the run folder; vae_lab/train.py calls

    logger = instantiate(cfg.logger, run_dir=run_dir)   # checks its package is there: an install hint if not
    logger.start(run_context(cfg, run_dir))             # the run's name, sweep, hyper-parameters, config
    logger.log_epoch(record)                            # metrics.jsonl's line of each epoch
    logger.log_metrics(summary_metrics, step)           # the evaluation's numbers
    logger.log_embedding(codes, labels, images, step)   # test codes, when logger.embedding_images > 0
    logger.log_figures(paths, step)                     # PNG files, as images (MLflow: as artifacts)
    logger.finish(summary)                              # the hyper-parameters beside the final numbers
    logger.close()

The run folder always holds every number and figure as files; a logger only copies them.
"""

import contextlib
import fcntl
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from vae_lab.errors import ConfigError
from vae_lab.operational import is_operational
from vae_lab.training.run_folder import flatten, is_finite_number

log = logging.getLogger("vae_lab")

TENSORBOARD_FOLDER = (
    "tensorboard"  # <run_dir>/tensorboard/: `tensorboard --logdir` on a sweep names runs by folder
)
EMBEDDING_TAG = "test_codes"  # the projector's name for the test codes

# overrides that change how a run is carried out, not what it computes: no hyper-parameters


def install_hint(option: str, extra: str) -> str:
    return (
        f"logger={option} needs the optional package of the '{extra}' extra, which is not installed: run "
        f"`pip install -c constraints.txt -e '.[{extra}]'` in the project folder, or use logger=none."
    )


@dataclass
class RunContext:
    """What a tracker needs to know of a run besides its numbers."""

    name: str  # the overrides that name its sweep folder, and its seed (loss=kl,seed=1)
    group: Optional[str] = None  # a sweep job's sweep folder; None for a single run
    hparams: dict[str, Any] = field(default_factory=dict)  # those overrides: key -> bool, int, float, str
    overrides: list[str] = field(default_factory=list)  # every override that changes what the run computes
    config: dict[str, Any] = field(default_factory=dict)  # the whole resolved config


def run_context(cfg: DictConfig, run_dir: Path) -> RunContext:
    """Give back the run's name, sweep folder, hyper-parameters and config, from Hydra where it runs the job.

    The hyper-parameters are the job's overrides that name its sweep folder (a sweep's point: Hydra's
    override_dirname, less its exclude_keys: evaluation settings, threads, ...) and its seed, if given.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    overrides, group, unnamed = [], None, set()
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        overrides = list(hydra_cfg.overrides.task)
        unnamed = set(hydra_cfg.job.config.override_dirname.exclude_keys)  # as job folders are named
        if hydra_cfg.mode == RunMode.MULTIRUN:
            group = str(hydra_cfg.sweep.dir)
    kept = [o for o in overrides if not is_operational(_key(o))]
    named = sorted(o for o in kept if _key(o) not in unnamed)
    seed = [o for o in kept if _key(o) == "seed"]
    config = OmegaConf.to_container(cfg, resolve=True)
    return RunContext(
        name=",".join(named + seed) or run_dir.name,
        group=group,
        hparams=parse_overrides(named + seed),
        overrides=kept,
        config=config,
    )


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Give back {key: value} of Hydra overrides, each value typed as Hydra reads it (bool, int, float or
    str; anything else as its text); a deletion (~key) is left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.is_delete():
            continue
        value = override.value()
        if not isinstance(value, (bool, int, float, str)):
            value = override.get_value_element_as_str()
        parsed[override.get_key_element()] = value
    return parsed


def flatten_numbers(tree: dict[str, Any] | None, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Yield ("a/b/c", number) for every finite number in a nested dict; lists as "name/0", "name/1", ...

    None (not applicable), strings and booleans are left out.
    """
    for name, value in flatten(tree or {}, sep="/", lists=True).items():
        if is_finite_number(value):
            yield prefix + name, float(value)


def epoch_numbers(record: dict[str, Any]) -> dict[str, float]:
    """Give back the numbers of one metrics.jsonl line a tracker shows: train/*, test/* and the speed."""
    numbers = {key: record.get(key) for key in ("train", "test", "train_s", "train_images_per_s")}
    return dict(flatten_numbers(numbers))


@contextlib.contextmanager
def file_lock(path: Optional[Path]) -> Iterator[None]:
    """Hold an exclusive lock on the file at path (made if missing) while the block runs; None: no lock."""
    if path is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


class NoLogger:
    """The default: the run folder's files are the whole record."""

    embedding_images = 0  # how many test codes log_embedding wants (0: none)

    def __init__(self, run_dir: Path | str | None = None):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.context = RunContext(name=self.run_dir.name if self.run_dir else "run")

    def start(self, context: RunContext) -> None:
        self.context = context

    def log_epoch(self, record: dict[str, Any]) -> None:
        pass

    def log_figures(self, paths: Sequence[Path | str], step: int) -> None:
        pass

    def log_metrics(self, metrics: dict[str, Any] | None, step: int = 0) -> None:
        pass

    def log_embedding(
        self, codes: torch.Tensor, labels: Sequence[str], images: torch.Tensor, step: int = 0
    ) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(NoLogger):
    """Scalars per epoch, the figures as images, the final metrics, the run's hyper-parameters beside its
    headline numbers (HParams) and the test codes with their labels and images (Projector), all in
    <run_dir>/tensorboard/."""

    def __init__(
        self,
        run_dir: Path | str,
        flush_secs: int = 30,
        projector_images: int = 1000,
        hparams_metrics: Sequence[str] = ("test.total",),
    ):
        super().__init__(run_dir)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ConfigError(install_hint("tensorboard", "tensorboard")) from error
        self.embedding_images = projector_images
        self.hparams_metrics = list(hparams_metrics)
        self.log_dir = self.run_dir / TENSORBOARD_FOLDER
        self.writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=flush_secs)

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Write train/* and test/* (total, recon, kl: nats per image) and the speed, at step = epoch."""
        for name, value in epoch_numbers(record).items():
            self.writer.add_scalar(name, value, global_step=record["epoch"])
        self.writer.flush()

    def log_figures(self, paths: Sequence[Path | str], step: int) -> None:
        """Write each PNG as an image named by its file's stem (samples, latent_scatter, ...)."""
        from matplotlib.image import imread

        for path in map(Path, paths):
            image = imread(path)  # (H, W, 3 or 4) floats in [0, 1] for PNG
            if image.ndim == 2:
                image = np.stack([image] * 3, axis=-1)
            self.writer.add_image(path.stem, image[..., :3], global_step=step, dataformats="HWC")
        self.writer.flush()

    def log_metrics(self, metrics: dict[str, Any] | None, step: int = 0) -> None:
        """Write every number of the evaluation (summary.json's "metrics") as metrics/<path>."""
        for name, value in flatten_numbers(metrics, "metrics/"):
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def log_embedding(
        self, codes: torch.Tensor, labels: Sequence[str], images: torch.Tensor, step: int = 0
    ) -> None:
        """Write the codes (N, D) for the Embedding Projector, each point with its label and its image
        (N, C, H, W in [0, 1], drawn into a sprite): projector_config.pbtxt, then <step>/test_codes/.

        Codes of fewer than 3 dimensions get zero columns up to 3: the projector's PCA finds no
        components in 2-d data and draws nothing; with the zeros it shows the codes as they are.
        """
        codes = codes.detach().cpu().float()
        if codes.shape[1] < 3:
            codes = torch.cat([codes, codes.new_zeros(len(codes), 3 - codes.shape[1])], dim=1)
        self.writer.add_embedding(
            codes,
            metadata=list(labels),
            label_img=images.detach().cpu().float(),
            global_step=step,
            tag=EMBEDDING_TAG,
        )
        self.writer.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        """Write the run's hyper-parameters and the names of its headline numbers for the HParams plugin.

        The plugin reads each metric's value from the scalar of that tag in this run (its last step):
        `hparams_metrics` names summary.json keys (test.total, metrics.iwae.nll_k100, ...), which the
        epochs and log_metrics wrote as test/total, metrics/iwae/nll_k100, ... Unlike
        SummaryWriter.add_hparams, nothing is written twice and no second run (a timestamped subfolder)
        appears: the session is this run's folder.
        """
        from torch.utils.tensorboard.summary import hparams

        flat = flatten(summary)
        shown = [key for key in self.hparams_metrics if is_finite_number(flat.get(key))]
        metrics = {key.replace(".", "/"): flat[key] for key in shown}
        for proto in hparams(dict(self.context.hparams), metrics):  # experiment, session start, session end
            self.writer.file_writer.add_summary(proto)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger(NoLogger):
    """A Weights & Biases run: the config, the numbers of each epoch, the figures as images, the final
    metrics in its summary; a sweep's runs grouped by their sweep folder and named by their overrides.

    Its files go to <run_dir>/wandb/. Offline (mode=offline or WANDB_MODE=offline) it needs no account
    and no network; `wandb sync <run_dir>/wandb/offline-run-*` uploads such a run later.
    """

    def __init__(
        self,
        run_dir: Path | str,
        project: str = "vae_lab",
        entity: Optional[str] = None,
        mode: Optional[str] = None,
        tags: Sequence[str] = (),
        system_stats: bool = False,
    ):
        super().__init__(run_dir)
        try:
            import wandb
        except ImportError as error:
            raise ConfigError(install_hint("wandb", "wandb")) from error
        self.wandb = wandb
        self.project, self.entity, self.mode = project, entity, mode
        self.tags = list(tags)
        self.system_stats = system_stats
        self.run = None
        self.exit_code = 1  # until finish(): a run that stops before its summary is marked failed

    def start(self, context: RunContext) -> None:
        super().start(context)
        config = dict(context.config) | {"overrides": list(context.overrides)}
        try:
            self.run = self.wandb.init(
                project=self.project,
                entity=self.entity,
                mode=self.mode,
                dir=str(self.run_dir),
                group=context.group,
                name=context.name,
                job_type="train",
                tags=self.tags or None,
                config=config,
                settings=self.wandb.Settings(
                    console="off", x_disable_stats=not self.system_stats, silent=True
                ),
            )
        except Exception as error:  # wandb raises its own errors, and network ones, without a common base
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(
                f"logger=wandb could not start its run ({first}). Without an account or network: "
                "WANDB_MODE=offline, or logger.mode=offline; to upload, run `wandb login` first."
            ) from None

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.run.log(epoch_numbers(record) | {"epoch": record["epoch"]}, step=record["epoch"])

    def log_figures(self, paths: Sequence[Path | str], step: int) -> None:
        images = {f"figures/{Path(path).stem}": self.wandb.Image(str(path)) for path in paths}
        self.run.log(images, step=step)

    def log_metrics(self, metrics: dict[str, Any] | None, step: int = 0) -> None:
        self.run.log(dict(flatten_numbers(metrics, "metrics/")), step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        """Put the run's final numbers (summary.json, flattened with /) in the W&B summary."""
        numbers = dict(flatten_numbers({key: summary.get(key) for key in ("test", "train", "metrics")}))
        numbers |= {key: summary[key] for key in ("status", "epochs", "wall_time_s") if key in summary}
        self.run.summary.update(numbers)
        self.exit_code = 0

    def close(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=self.exit_code)
            self.run = None


class MlflowLogger(NoLogger):
    """An MLflow run per job: the flattened config as params, the numbers of each epoch with their step,
    the evaluation's and the summary's numbers, the figures as artifacts (figures/*.png).

    The store is `tracking_uri`: a local SQLite file by default (sqlite:///outputs/mlflow.db, made on
    first use, its artifacts in mlartifacts/ beside it), or any MLflow tracking server. The jobs of one
    sweep are the children of one parent run, named by the sweep folder and found by its tag
    vae_lab.sweep: the first job makes it, under a file lock, as joblib's jobs start at once.
    """

    PARAM_LENGTH = 6000  # MLflow 3's longest param value
    BATCH = 100  # MLflow's most params per log_batch

    def __init__(
        self,
        run_dir: Path | str,
        tracking_uri: str = "sqlite:///outputs/mlflow.db",
        experiment: str = "vae_lab",
    ):
        super().__init__(run_dir)
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as error:
            raise ConfigError(install_hint("mlflow", "mlflow")) from error
        for key, value, allowed in (
            ("tracking_uri", tracking_uri, "an MLflow tracking URI such as sqlite:///outputs/mlflow.db"),
            ("experiment", experiment, "an MLflow experiment name"),
        ):
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"logger.{key}={value!r} is not allowed: it must be {allowed}.")
        self.database = None  # the SQLite file, where the store is one
        if tracking_uri.startswith("sqlite:///"):
            self.database = Path(tracking_uri.removeprefix("sqlite:///")).absolute()
            tracking_uri = f"sqlite:///{self.database}"  # the same file from a job's other working folder
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.client_class = MlflowClient
        self.run_id, self.parent_id, self.status = None, None, "FAILED"  # FINISHED once finish() ran

    def start(self, context: RunContext) -> None:
        """Open the run (under its sweep's parent run, made if this job is the sweep's first) and log the
        whole config as params, the job's overrides as the tag vae_lab.overrides."""
        from mlflow.entities import Param

        super().start(context)
        try:
            with file_lock(self._lock_file(context.group)):
                self.client = self.client_class(tracking_uri=self.tracking_uri)  # a new store: its tables
                experiment_id = self._experiment_id()
                self.parent_id = self._parent_run(experiment_id, context.group) if context.group else None
            tags = {"vae_lab.run_dir": str(self.run_dir), "vae_lab.overrides": " ".join(context.overrides)}
            if context.group:
                tags |= {"vae_lab.sweep": context.group, "mlflow.parentRunId": self.parent_id}
            run = self.client.create_run(experiment_id, run_name=context.name, tags=tags)
        except Exception as error:  # MLflow's store errors, and network ones, have no common base
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(
                f"logger=mlflow could not open its run in {self.tracking_uri} ({first}): give "
                "logger.tracking_uri a store you can write, such as sqlite:///outputs/mlflow.db."
            ) from None
        self.run_id = run.info.run_id
        params = [
            Param(key, str(value)[: self.PARAM_LENGTH]) for key, value in flatten(context.config).items()
        ]
        for first in range(0, len(params), self.BATCH):
            self.client.log_batch(self.run_id, params=params[first : first + self.BATCH])

    def _lock_file(self, group: Optional[str]) -> Optional[Path]:
        """A file beside the SQLite store (else in the sweep folder) that jobs starting at once lock, so
        that the store's tables, the experiment and the parent run are made once."""
        if self.database is not None:
            self.database.parent.mkdir(parents=True, exist_ok=True)
            return self.database.with_name(self.database.name + ".lock")
        return Path(group) / ".mlflow.lock" if group is not None else None

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        artifacts = None  # a server's own artifact store; a SQLite store's is a folder beside its file
        if self.database is not None:
            artifacts = (self.database.parent / "mlartifacts").as_uri()
        return self.client.create_experiment(self.experiment, artifact_location=artifacts)

    def _parent_run(self, experiment_id: str, group: str) -> str:
        query = f"tags.`vae_lab.sweep_parent` = '{group}'"
        found = self.client.search_runs([experiment_id], filter_string=query, max_results=1)
        if found:
            return found[0].info.run_id
        tags = {"vae_lab.sweep_parent": group, "vae_lab.sweep": group}
        return self.client.create_run(experiment_id, run_name=Path(group).name, tags=tags).info.run_id

    def _log(self, numbers: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, step) for name, value in numbers.items()]
        for first in range(0, len(metrics), self.BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[first : first + self.BATCH])

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Log train/* and test/* (total, recon, kl: nats per image) and the speed, at step = epoch."""
        self._log(epoch_numbers(record), record["epoch"])

    def log_metrics(self, metrics: dict[str, Any] | None, step: int = 0) -> None:
        """Log every number of the evaluation (summary.json's "metrics") as metrics/<path>."""
        self._log(dict(flatten_numbers(metrics, "metrics/")), step)

    def log_figures(self, paths: Sequence[Path | str], step: int) -> None:
        """Copy each PNG into the run's artifacts, under figures/."""
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path="figures")

    def finish(self, summary: dict[str, Any]) -> None:
        """Log the summary's numbers that the epochs and the evaluation did not (epochs, wall_time_s,
        peak_memory_mib, ...) and its status as the tag vae_lab.status."""
        logged = ("test", "train", "metrics", "units", "figures", "status")
        rest = {key: value for key, value in summary.items() if key not in logged}
        self._log(dict(flatten_numbers(rest)), summary.get("epochs", 0))
        self.client.set_tag(self.run_id, "vae_lab.status", str(summary.get("status")))
        self.status = "FINISHED"

    def close(self) -> None:
        """End the run (FAILED where finish() did not run); the parent ends with its latest child."""
        if self.run_id is None:
            return
        self.client.set_terminated(self.run_id, status=self.status)
        if self.parent_id is not None:
            self.client.set_terminated(self.parent_id, status="FINISHED")
        self.run_id = None


class MultiLogger(NoLogger):
    """Several loggers at once: logger=multi 'logger/backends=[tensorboard,wandb]'.

    `backends` holds each one's config (conf/logger/backends/*.yaml bring in conf/logger/<name>.yaml);
    each is built here, given the run folder, and gets every call in turn.
    """

    def __init__(self, run_dir: Path | str, backends: DictConfig | dict | None = None):
        from vae_lab.training.build import instantiate_node

        super().__init__(run_dir)
        if not backends:
            raise ConfigError(
                "logger=multi was given no loggers: name them as 'logger/backends=[tensorboard,wandb]' "
                "(the choices: tensorboard, wandb, mlflow)."
            )
        self.loggers = []
        try:
            for name, node in backends.items():
                self.loggers.append(instantiate_node(node, f"logger.backends.{name}", run_dir=run_dir))
        except BaseException:
            self.close()
            raise
        self.embedding_images = max(logger.embedding_images for logger in self.loggers)

    def start(self, context: RunContext) -> None:
        super().start(context)
        for logger in self.loggers:
            logger.start(context)

    def log_epoch(self, record: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_epoch(record)

    def log_figures(self, paths: Sequence[Path | str], step: int) -> None:
        for logger in self.loggers:
            logger.log_figures(paths, step)

    def log_metrics(self, metrics: dict[str, Any] | None, step: int = 0) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def log_embedding(
        self, codes: torch.Tensor, labels: Sequence[str], images: torch.Tensor, step: int = 0
    ) -> None:
        for logger in self.loggers:
            count = min(logger.embedding_images, len(codes))
            if count:
                logger.log_embedding(codes[:count], list(labels)[:count], images[:count], step)

    def finish(self, summary: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.finish(summary)

    def close(self) -> None:
        for logger in self.loggers:
            try:
                logger.close()
            except Exception as error:  # one tracker's failure to close must not hide the others'
                log.warning(f"{type(logger).__name__} did not close cleanly: {error}")
