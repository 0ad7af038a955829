"""Several trackers at once (logger=multi)."""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from vae_lab.errors import ConfigError
from vae_lab.training.loggers.base import NoLogger
from vae_lab.training.loggers.context import RunContext

log = logging.getLogger("vae_lab")


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
