"""A run folder's files: metrics.jsonl, summary.json, checkpoint.pt, and `load_run` to read them back."""

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vae_lab.errors import RunFolderError

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = Path(".hydra") / "config.yaml"


def write_atomically(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a kill never leaves half a file."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_json(path: Path, data: dict[str, Any]) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "w") as file:
            json.dump(data, file, indent=2)
            file.write("\n")

    write_atomically(path, write)


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(Path(run_dir) / METRICS_FILE, "a") as file:
        file.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    write_atomically(Path(run_dir) / CHECKPOINT_FILE, lambda temporary: torch.save(state, temporary))


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    # weights_only: no code runs from a checkpoint file
    return torch.load(Path(run_dir) / CHECKPOINT_FILE, map_location=map_location, weights_only=True)


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_runs(folders: list[Path]) -> list[Path]:
    """Give back every run folder below the given folders (a run folder itself counts), in job order."""
    runs = set()
    for folder in folders:
        if (folder / CONFIG_FILE).is_file():
            runs.add(folder)
        runs.update(config.parent.parent for config in folder.rglob(str(CONFIG_FILE)))
    return sorted(runs, key=_natural_key)


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
    config = OmegaConf.load(run_dir / CONFIG_FILE)
    model = instantiate(config.model)
    model.load_state_dict(load_checkpoint(run_dir)["model"])
    model.to(device).eval()
    summary_path = run_dir / SUMMARY_FILE
    summary: Optional[dict] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return Run(path=run_dir, config=config, model=model, summary=summary, metrics=read_metrics(run_dir))
