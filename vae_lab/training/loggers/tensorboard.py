"""TensorBoard: scalars, figures, HParams and the Embedding Projector in <run_dir>/tensorboard/."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vae_lab.errors import ConfigError
from vae_lab.training.loggers.base import NoLogger, epoch_numbers, finite_numbers, install_hint
from vae_lab.training.run_folder import flatten, is_finite_number

TENSORBOARD_FOLDER = (
    "tensorboard"  # <run_dir>/tensorboard/: `tensorboard --logdir` on a sweep names runs by folder
)
EMBEDDING_TAG = "test_codes"  # the projector's name for the test codes


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
        for name, value in finite_numbers(metrics, "metrics/"):
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
