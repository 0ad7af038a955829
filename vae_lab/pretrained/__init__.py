"""Trained models that ship with vae_lab: the article's autoencoder and VAE (2-d latent, the article's
full training) and both with a 16-d latent, trained on MNIST.

    import vae_lab
    run = vae_lab.load_pretrained("article_vae")   # what load_run gives: model (eval mode), config, summary

Each folder here holds weights.pt (the model's state dict in float16, under 1 MB), config.yaml (the
run's config), summary.json (the run's summary, its `shipped` entry the test loss of these weights on
the MNIST test split) and record.json (the command, commit and machine that trained it, and the
command that packed it: experiments/package_pretrained.py). No model trained on CelebA ships: its
terms forbid redistributing anything made from its images.
"""

import json
from pathlib import Path
from typing import Optional

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vae_lab.errors import VaeLabError
from vae_lab.legacy_configs import upgrade_legacy_model
from vae_lab.runs import Run, ready_to_evaluate

FOLDER = Path(__file__).resolve().parent
WEIGHTS, CONFIG, SUMMARY, RECORD = "weights.pt", "config.yaml", "summary.json", "record.json"


def names() -> list[str]:
    """Give back the names of the shipped models."""
    return sorted(path.parent.name for path in FOLDER.glob(f"*/{WEIGHTS}"))


def load_pretrained(name: Optional[str] = None, device: str | torch.device = "cpu") -> Run:
    """Give back a shipped model as `load_run` gives a run: its model in eval mode (float32), config,
    summary and per-epoch metrics; no data and no training needed."""
    if name not in names():
        given = "no name" if name is None else f"{name!r}"
        raise VaeLabError(
            f"load_pretrained: {given} is not a shipped model; the shipped models are: {', '.join(names())}."
        )
    folder = FOLDER / name
    config = OmegaConf.load(folder / CONFIG)
    model = instantiate(upgrade_legacy_model(OmegaConf.to_container(config.model)))
    state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(
        {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
    )
    metrics_path = folder / "metrics.jsonl"
    metrics = (
        [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    )
    summary = json.loads((folder / SUMMARY).read_text())
    return Run(
        path=folder, config=config, model=ready_to_evaluate(model, device), summary=summary, metrics=metrics
    )


def record(name: str) -> dict:
    """Give back how a shipped model was made: the command, commit and machine, and how it was packed."""
    if name not in names():
        raise VaeLabError(
            f"record: {name!r} is not a shipped model; the shipped models are: {', '.join(names())}."
        )
    return json.loads((FOLDER / name / RECORD).read_text())
