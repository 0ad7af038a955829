"""Weights & Biases: a run per job, grouped by its sweep folder, online or offline."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from vae_lab.errors import ConfigError
from vae_lab.training.loggers.base import NoLogger, epoch_numbers, finite_numbers, install_hint
from vae_lab.training.loggers.context import RunContext


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
        self.run.log(dict(finite_numbers(metrics, "metrics/")), step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        """Put the run's final numbers (summary.json, flattened with /) in the W&B summary."""
        numbers = dict(finite_numbers({key: summary.get(key) for key in ("test", "train", "metrics")}))
        numbers |= {key: summary[key] for key in ("status", "epochs", "wall_time_s") if key in summary}
        self.run.summary.update(numbers)
        self.exit_code = 0

    def close(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=self.exit_code)
            self.run = None
