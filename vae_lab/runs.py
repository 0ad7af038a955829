"""Reading a finished run back: its config, its trained model (the plain layers), summary and metrics."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vae_lab.errors import RunFolderError
from vae_lab.legacy_configs import upgrade_legacy_model
from vae_lab.training import checkpoint, early_stopping
from vae_lab.training.run_folder import CHECKPOINT_FILE, CONFIG_FILE, read_metrics, read_summary


@dataclass
class Run:
    """A finished run read back from its folder."""

    path: Path
    config: DictConfig
    model: torch.nn.Module
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Give back a run's config, its trained model (in eval mode), summary and per-epoch metrics."""
    run_dir = Path(run_dir)
    missing = [name for name in (CONFIG_FILE, CHECKPOINT_FILE) if not (run_dir / name).exists()]
    if missing:
        raise RunFolderError(
            f"{run_dir} is not a finished vae_lab run: it has no {', '.join(map(str, missing))}. "
            "Point at a folder that `python -m vae_lab.train` wrote, such as outputs/<date>/<time>."
        )
    try:
        config = OmegaConf.load(run_dir / CONFIG_FILE)
    except Exception as error:  # YAML's and omegaconf's own errors
        raise RunFolderError(f"{run_dir / CONFIG_FILE} cannot be read as a config: {error}") from None
    if (
        not isinstance(config, DictConfig)
        or not isinstance(config.get("model"), DictConfig)
        or ("_target_" not in config.model)
    ):
        raise RunFolderError(
            f"{run_dir / CONFIG_FILE} is not the config of a vae_lab run: it has no model._target_. "
            "Point at a folder that `python -m vae_lab.train` wrote, such as outputs/<date>/<time>."
        )
    # the plain model, whatever speed options trained it: the same state-dict keys (vae_lab/speed)
    config.model = upgrade_legacy_model(OmegaConf.to_container(config.model))
    model = instantiate(config.model)
    model.load_state_dict(checkpoint.load(run_dir).model)
    if (run_dir / early_stopping.BEST_FILE).is_file():  # the weights early stopping kept, not the last
        model.load_state_dict(torch.load(run_dir / early_stopping.BEST_FILE, map_location="cpu")["model"])
    return Run(
        path=run_dir,
        config=config,
        model=ready_to_evaluate(model, device),
        summary=read_summary(run_dir),
        metrics=read_metrics(run_dir),
    )


def ready_to_evaluate(model: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """Give back the loaded model on `device`, in eval mode; on a CPU with its convolutions' weights in
    NHWC, the layout in which PyTorch's CPU convolutions run 1.5-2x faster than in NCHW over the test
    split (docs/benchmarks.md, Loaded models). The values, and so every number, stay the same."""
    model.to(device).eval()
    if torch.device(device).type == "cpu":
        model.to(memory_format=torch.channels_last)
    return model
