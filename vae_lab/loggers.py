"""Where a run's numbers and figures go besides its own files: nowhere (the default) or TensorBoard.

Each logger is built by Hydra from conf/logger/*.yaml, given the run folder:

    logger = instantiate(cfg.logger, run_dir=run_dir)
    logger.log_epoch(record)            # metrics.jsonl's line of each epoch
    logger.log_figures(paths, step)     # PNG files, as images
    logger.log_metrics(summary_metrics) # the evaluation's numbers, flattened
    logger.close()

The run folder always holds every number and figure as files; a logger only copies them.
"""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vae_lab.errors import ConfigError
from vae_lab.runs import flatten

TENSORBOARD_FOLDER = (
    "tensorboard"  # <run_dir>/tensorboard/: `tensorboard --logdir` on a sweep names runs by folder
)


class NoLogger:
    """The default: the run folder's files are the whole record."""

    def __init__(self, run_dir: Path | str | None = None):
        self.run_dir = Path(run_dir) if run_dir is not None else None

    def log_epoch(self, record: dict[str, Any]) -> None:
        pass

    def log_figures(self, paths: Sequence[Path | str], step: int) -> None:
        pass

    def log_metrics(self, metrics: dict[str, Any] | None, step: int = 0) -> None:
        pass

    def close(self) -> None:
        pass


def flatten_numbers(tree: dict[str, Any] | None, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Yield ("a/b/c", number) for every finite number in a nested dict; lists as "name/0", "name/1", ...

    None (not applicable), strings and booleans are left out.
    """
    for name, value in flatten(tree or {}, sep="/", lists=True).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            yield prefix + name, float(value)


class TensorBoardLogger(NoLogger):
    """Scalars per epoch, the figures as images and the final metrics, in <run_dir>/tensorboard/."""

    def __init__(self, run_dir: Path | str, flush_secs: int = 30):
        super().__init__(run_dir)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ConfigError(
                "logger=tensorboard needs the tensorboard package, which is not installed: run "
                "`pip install -c constraints.txt -e '.[tensorboard]'` in the project folder, "
                "or use logger=none."
            ) from error
        self.log_dir = self.run_dir / TENSORBOARD_FOLDER
        self.writer = SummaryWriter(log_dir=str(self.log_dir), flush_secs=flush_secs)

    def log_epoch(self, record: dict[str, Any]) -> None:
        """Write train/* and test/* (total, recon, kl: nats per image) and the speed, at step = epoch."""
        numbers = {key: record.get(key) for key in ("train", "test", "train_s", "train_images_per_s")}
        for name, value in flatten_numbers(numbers):
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

    def close(self) -> None:
        self.writer.close()
