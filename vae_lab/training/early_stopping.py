"""Early stopping: training ends once the loss on a validation split held out of the training images
(data.validation) has not fallen for `patience` epochs, and the model keeps the best epoch's weights.

Its state survives a resume without a place in the checkpoint: each epoch's record in the history holds
its validation loss (so the best loss and the epochs since it follow from the history), and the best
weights lie in the run folder (BEST_FILE), written after the epoch's checkpoint. A kill between the two
loses nothing: the best epoch is then the checkpoint's own last epoch, whose weights the checkpoint holds.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from vae_lab.errors import ConfigError
from vae_lab.evaluation.inference import evaluate_loss
from vae_lab.files import write_atomically

log = logging.getLogger("vae_lab.train")

BEST_FILE = "early_stopping_best.pt"  # {"epoch", "validation_total", "model"}: the weights the run keeps


@dataclass(frozen=True)
class Progress:
    """Where a run stands: its lowest validation loss, the epoch of it, and epochs trained since."""

    best_total: float
    best_epoch: int
    epochs_since_best: int


def progress_of(history: list[dict[str, Any]]) -> Optional[Progress]:
    """Give back the run's progress from its epoch records (None before the first): the earliest epoch of
    the lowest validation total is the best."""
    totals = [
        (record["validation"]["total"], record["epoch"]) for record in history if "validation" in record
    ]
    if not totals:
        return None
    best_total, best_epoch = min(totals, key=lambda pair: (pair[0], pair[1]))
    return Progress(best_total, best_epoch, history[-1]["epoch"] - best_epoch)


class EarlyStopping:
    """Watches the validation loss epoch by epoch; `after_epoch` says when to stop."""

    def __init__(self, patience: int, run_dir: Path):
        self.patience = patience
        self.path = Path(run_dir) / BEST_FILE

    @classmethod
    def start(cls, patience: Optional[int], data, run_dir: Path, history: list, model, write: bool = True):
        """Give back the watch for a run (None where patience is null), its state taken from the history
        of a resumed run."""
        if patience is None:
            return None
        if getattr(data, "validation_images", None) is None:
            raise ConfigError(
                f"trainer.early_stopping.patience={patience} needs a validation split, and the data has "
                "none: hold some training images out with data.validation=N (e.g. 10000), or turn "
                "early stopping off with trainer.early_stopping.patience=null"
            )
        watch = cls(patience, run_dir)
        progress = progress_of(history)
        if write and progress is not None and progress.best_epoch == history[-1]["epoch"]:
            if watch.saved_epoch() != progress.best_epoch:  # killed before the file was written
                watch.save_best(progress, model)
        return watch

    def validation_loss(self, model, loss, data, batch_size: int, seed: int) -> dict[str, Optional[float]]:
        """Give back the validation split's mean total, reconstruction and KL (nats per image)."""
        return evaluate_loss(model, loss, data.validation_images, batch_size, seed)

    def exhausted(self, history: list[dict[str, Any]]) -> bool:
        """Whether `patience` epochs have passed without a lower validation loss."""
        progress = progress_of(history)
        return progress is not None and progress.epochs_since_best >= self.patience

    def after_epoch(self, history: list[dict[str, Any]], model, write: bool = True) -> bool:
        """Keep the weights where the last epoch is the best; give back whether to stop now."""
        progress = progress_of(history)
        if write and progress is not None and progress.best_epoch == history[-1]["epoch"]:
            self.save_best(progress, model)
        if self.exhausted(history):
            log.info(
                f"early stopping after epoch {history[-1]['epoch']}: no lower validation loss for "
                f"{progress.epochs_since_best} epochs; keeping epoch {progress.best_epoch}'s weights "
                f"(validation {progress.best_total:.2f})"
            )
            return True
        return False

    def save_best(self, progress: Progress, model) -> None:
        state = {"epoch": progress.best_epoch, "validation_total": progress.best_total}
        state["model"] = {name: value.detach().cpu() for name, value in model.state_dict().items()}
        write_atomically(self.path, lambda temporary: torch.save(state, temporary))

    def saved_epoch(self) -> Optional[int]:
        """Give back the epoch of the weights kept in the run folder (None where there are none)."""
        return torch.load(self.path, map_location="cpu")["epoch"] if self.path.is_file() else None

    def finish(self, history: list[dict[str, Any]], model) -> dict[str, Any]:
        """Load the best epoch's weights into the model; give back that epoch's record."""
        progress = progress_of(history)
        if progress is None:
            return history[-1]
        kept = torch.load(self.path, map_location="cpu")
        model.load_state_dict(kept["model"])
        return next(record for record in history if record["epoch"] == progress.best_epoch)
