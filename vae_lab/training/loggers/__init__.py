"""Where a run's numbers and figures go besides its own files: nowhere (the default), TensorBoard,
Weights & Biases, MLflow, or several of them at once (docs/trackers.md).

Each logger is built by Hydra from conf/logger/*.yaml, given the run folder; vae_lab/train.py calls

    logger = instantiate(cfg.logger, run_dir=run_dir)   # checks its package is there: an install hint if not
    logger.start(run_context(config, run_dir))          # the run's name, sweep, hyper-parameters, config
    logger.log_epoch(record)                            # metrics.jsonl's line of each epoch
    logger.log_metrics(summary_metrics, step)           # the evaluation's numbers
    logger.log_embedding(codes, labels, images, step)   # test codes, when logger.embedding_images > 0
    logger.log_figures(paths, step)                     # PNG files, as images (MLflow: as artifacts)
    logger.finish(summary)                              # the hyper-parameters beside the final numbers
    logger.close()

The run folder always holds every number and figure as files; a logger only copies them.

One module per tracker: tensorboard.py, wandb.py, mlflow.py, multi.py (several at once); base.py holds
NoLogger, which each extends, and context.py what a tracker knows of a run (RunContext).
"""

from vae_lab.training.loggers.base import NoLogger, epoch_numbers, finite_numbers, install_hint
from vae_lab.training.loggers.context import RunContext, parse_overrides, run_context
from vae_lab.training.loggers.mlflow import MlflowLogger
from vae_lab.training.loggers.multi import MultiLogger
from vae_lab.training.loggers.tensorboard import TensorBoardLogger
from vae_lab.training.loggers.wandb import WandbLogger

__all__ = [
    "MlflowLogger",
    "MultiLogger",
    "NoLogger",
    "RunContext",
    "TensorBoardLogger",
    "WandbLogger",
    "epoch_numbers",
    "finite_numbers",
    "install_hint",
    "parse_overrides",
    "run_context",
]
