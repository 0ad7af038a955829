"""A run folder's files: metrics.jsonl and summary.json (written atomically), finding runs, and `load_run`
to read one back (the checkpoint's own format: vae_lab/checkpoint.py)."""

import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vae_lab.errors import RunFolderError

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = Path(".hydra") / "config.yaml"


def unwritable(path: Path, error: OSError) -> RunFolderError:
    """Give back the error that tells the user a file could not be written, and why."""
    reason = error.strerror or str(error)
    return RunFolderError(
        f"could not write {path}: {reason}. Free some disk space, or point the run at a writable "
        "folder (hydra.run.dir=... for a run, hydra.sweep.dir=... for a sweep); files already "
        "written there are unchanged."
    )


def write_atomically(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a kill never leaves half a file."""
    path = Path(path)
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:  # a full disk, a read-only or vanished folder: the old file stays whole
        raise unwritable(path, error) from error
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)


def write_json(path: Path, data: dict[str, Any]) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "w") as file:
            json.dump(data, file, indent=2)
            file.write("\n")

    write_atomically(path, write)


def write_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Write metrics.jsonl afresh with one line per record (a resumed run's history)."""

    def write(temporary: str) -> None:
        with open(temporary, "w") as file:
            file.writelines(json.dumps(record) + "\n" for record in records)

    write_atomically(Path(run_dir) / METRICS_FILE, write)


def read_summary(run_dir: Path) -> dict[str, Any]:
    """Give back summary.json's contents: {} where there is none (yet), a failed record where it cannot
    be read. The one reader of summary.json: the app, `load_run` and `compare` all call it."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        return {"status": "failed", "error": f"unreadable summary.json: {error}"}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_finite_number(value: Any) -> bool:
    """True for an int or float that is not a bool, NaN or infinite: a number a summary can report."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flatten(tree: Any, sep: str = ".", lists: bool = False, prefix: str = "") -> dict[str, Any]:
    """Give back a nested dict as {'a.b': value}, keys joined by sep; lists stay whole unless lists=True
    (then each item is a key of its own: 'a.0', 'a.1', ...)."""
    if lists and isinstance(tree, (list, tuple)):
        tree = {str(index): item for index, item in enumerate(tree)}
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, sep, lists, f"{prefix}{sep}{key}" if prefix else str(key)))
    return flat


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
    from vae_lab import checkpoint  # here: the checkpoint module writes through this one's helpers

    config = OmegaConf.load(run_dir / CONFIG_FILE)
    model = instantiate(config.model)
    model.load_state_dict(checkpoint.load(run_dir).model)
    model.to(device).eval()
    return Run(
        path=run_dir, config=config, model=model, summary=read_summary(run_dir), metrics=read_metrics(run_dir)
    )
