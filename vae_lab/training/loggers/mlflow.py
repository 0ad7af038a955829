"""MLflow: a run per job under its sweep's parent run, in a local SQLite store or on a tracking server."""

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from vae_lab.errors import ConfigError
from vae_lab.files import file_lock
from vae_lab.training.loggers.base import NoLogger, epoch_numbers, finite_numbers, install_hint
from vae_lab.training.loggers.context import RunContext
from vae_lab.training.run_folder import flatten


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
        self._log(dict(finite_numbers(metrics, "metrics/")), step)

    def log_figures(self, paths: Sequence[Path | str], step: int) -> None:
        """Copy each PNG into the run's artifacts, under figures/."""
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path="figures")

    def finish(self, summary: dict[str, Any]) -> None:
        """Log the summary's numbers that the epochs and the evaluation did not (epochs, wall_time_s,
        peak_memory_mib, ...) and its status as the tag vae_lab.status."""
        logged = ("test", "train", "metrics", "units", "figures", "status")
        rest = {key: value for key, value in summary.items() if key not in logged}
        self._log(dict(finite_numbers(rest)), summary.get("epochs", 0))
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
