"""A run's settings, read once from its checked config: what each part of a run is handed.

    settings = read_settings(cfg, run_dir)  # after config.check_config(cfg)

`vae_lab/train.py` is the one module that holds the composed DictConfig; below it, the builders get the
node of the part they build (conf/model, conf/loss, ...), the loop its FitSettings, the evaluation its
node, the trackers the resolved config, and resuming the keys a checkpoint must match.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from vae_lab.speed import SpeedOptions
from vae_lab.training.checkpoint import read_hydra_files, resume_key
from vae_lab.training.loop import FitSettings
from vae_lab.training.schedule import EpochSchedule, LrStages


@dataclass(frozen=True)
class Parts:
    """The config nodes that conf/ builds by `_target_`, one per part (training/build.py)."""

    model: DictConfig
    loss: DictConfig
    optimizer: DictConfig
    data: DictConfig
    logger: DictConfig


@dataclass(frozen=True)
class RunSettings:
    """Everything `run` reads of the config."""

    parts: Parts
    fit: FitSettings  # the loop's numbers, and what each checkpoint records
    evaluation: DictConfig  # conf/evaluation (EvaluationSchema), for evaluation/suite.py
    speed: SpeedOptions  # conf/speed: the faster layers swapped in after the build
    seed: int
    device: str  # auto, cpu, cuda, cuda:1, mps (devices.resolve_device)
    threads: Optional[int]  # None: torch's default, or a parallel job's share of the cores
    batch_size: int  # the global batch, split over the processes of a data-parallel run
    sync_batchnorm: bool  # BatchNorm on the global batch's statistics in a data-parallel run
    data_root: str  # where the evaluation's classifier cache lives
    progress: bool
    figures: bool  # draw the run's figures (trainer.figures)
    epochs: int
    objective: Optional[str]  # the summary key a search minimises (hydra/sweeper=optuna)
    resume_key: dict[str, Any]  # what a checkpoint must match to be gone on with (checkpoint.resume_key)
    config: dict[str, Any]  # the whole resolved config, as the trackers record it


def read_settings(cfg: DictConfig, run_dir: Path) -> RunSettings:
    """Give back the run's settings from its composed config, checked already (config.check_config)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    trainer = cfg.trainer
    speed = SpeedOptions.of(cfg.speed)
    key = resume_key(config)
    return RunSettings(
        parts=Parts(cfg.model, cfg.loss, cfg.optimizer, cfg.data, cfg.logger),
        fit=FitSettings(
            epochs=trainer.epochs,
            batch_size=trainer.batch_size,
            eval_batch_size=trainer.eval_batch_size,
            seed=cfg.seed,
            progress=trainer.progress,
            resume_config=key,
            speed=speed.as_dict(),
            hydra_files=read_hydra_files(run_dir),
            early_stopping_patience=trainer.early_stopping.patience,
            schedule=EpochSchedule(
                kl_warmup_epochs=trainer.kl_warmup_epochs,
                lr_stages=LrStages.of(trainer.lr_stages.base, trainer.lr_stages.decay),
                lr=cfg.optimizer.lr,
            ),
        ),
        evaluation=cfg.evaluation,
        speed=speed,
        seed=cfg.seed,
        device=cfg.device,
        threads=trainer.threads,
        batch_size=trainer.batch_size,
        sync_batchnorm=trainer.sync_batchnorm,
        data_root=cfg.data.root,
        progress=trainer.progress,
        figures=trainer.figures,
        epochs=trainer.epochs,
        objective=cfg.objective,
        resume_key=key,
        config=config,
    )
