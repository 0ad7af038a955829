"""Run the Hydra app with a study's fixed overrides first; command-line overrides follow and win."""

import importlib.util
import logging
import sys

import torch
from hydra import compose, initialize_config_dir

from vae_lab.errors import VaeLabError
from vae_lab.evaluation.classifier import load_or_train_for_config
from vae_lab.train import CONF_DIR, main


def all_jobs_at_once(jobs: int) -> list[str]:
    """Give back the launcher overrides that run a study's jobs at once where that is faster, when the
    joblib plugin is installed: on a CPU all of them, one thread each (docs/sweeps.md, Launchers); on a
    machine with several GPUs as many as there are GPUs, each job on its own (round robin,
    config.resolve_device); on one GPU, none (the jobs run one after another). Jobs run at once would
    share one terminal line with their progress bars, so each logs a line per quarter epoch instead
    (`trainer.progress=true` on the command line brings the bars back)."""
    if importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None:
        return []
    if torch.cuda.is_available():
        jobs = min(jobs, torch.cuda.device_count())
        if jobs < 2:
            return []
    return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}", "trainer.progress=false"]


def train_the_classifier_once(arguments: list[str]) -> None:
    """Train (or find cached) the digit classifier the jobs' evaluation needs, before they start: jobs
    running at once would each train it, since none finds it cached yet."""
    overrides = [arg for arg in arguments if arg.startswith(("data.", "evaluation.", "experiment="))]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    if not cfg.evaluation.enabled:
        return
    # Hydra has not set up logging yet: without this, its minutes of training would pass in silence
    # when progress bars are off or the output is not a terminal (each epoch logs a line)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logger = logging.getLogger("vae_lab")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        load_or_train_for_config(cfg)
    except VaeLabError as error:
        raise SystemExit(str(error)) from None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def launch(*overrides: str) -> None:
    sys.argv = [sys.argv[0], *overrides, *sys.argv[1:]]
    main()
