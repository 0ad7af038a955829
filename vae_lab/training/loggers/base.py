"""The logger every tracker extends (NoLogger, the default: the run folder's files are the whole record),
and the numbers of a run that trackers show."""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from vae_lab.training.loggers.context import RunContext
from vae_lab.training.run_folder import flatten, is_finite_number


def install_hint(option: str, extra: str) -> str:
    return (
        f"logger={option} needs the optional package of the '{extra}' extra, which is not installed: run "
        f"`pip install -c constraints.txt -e '.[{extra}]'` in the project folder, or use logger=none."
    )


def finite_numbers(tree: dict[str, Any] | None, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Yield ("a/b/c", number) for every finite number in a nested dict; lists as "name/0", "name/1", ...

    None (not applicable), strings and booleans are left out.
    """
    for name, value in flatten(tree or {}, sep="/", lists=True).items():
        if is_finite_number(value):
            yield prefix + name, float(value)


def epoch_numbers(record: dict[str, Any]) -> dict[str, float]:
    """Give back the numbers of one metrics.jsonl line a tracker shows: train/*, test/* and the speed."""
    numbers = {key: record.get(key) for key in ("train", "test", "train_s", "train_images_per_s")}
    return dict(finite_numbers(numbers))


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
