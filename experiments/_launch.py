"""Run the Hydra app with a study's fixed overrides first; command-line overrides follow and win."""

import importlib.util
import sys

import torch

from vae_lab.train import main


def all_jobs_at_once_on_cpu(jobs: int) -> list[str]:
    """Give back the launcher overrides of the faster way to run a sweep's jobs on this CPU: all at
    once, one thread each (README: Speed), where the joblib plugin is installed and no GPU is seen."""
    if torch.cuda.is_available() or importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None:
        return []
    return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]


def launch(*overrides: str) -> None:
    sys.argv = [sys.argv[0], *overrides, *sys.argv[1:]]
    main()
