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
    """Give back summary.json's contents, or {} where there is none (yet) or it cannot be read."""
    try:
        return json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    write_atomically(Path(run_dir) / CHECKPOINT_FILE, lambda temporary: torch.save(state, temporary))


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Give back a run's checkpoint; a damaged file gives a RunFolderError naming it."""
    path = Path(run_dir) / CHECKPOINT_FILE
    try:
        # weights_only: no code runs from a checkpoint file
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # truncated: RuntimeError or EOFError; overwritten: UnpicklingError
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunFolderError(
            f"{path} cannot be read ({reason}): the file is truncated or corrupt. vae_lab writes "
            "checkpoints atomically, so it was damaged afterwards (a copy cut short?). Copy it again, "
            "or start the run afresh in a new folder."
        ) from error


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


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Give back 'key: saved -> current' for every key whose value differs between two config trees."""
    saved_flat, current_flat = flatten(saved), flatten(current)
    missing = "(absent)"
    return [
        f"{key}: {saved_flat.get(key, missing)!r} in the checkpoint, {current_flat.get(key, missing)!r} now"
        for key in sorted(saved_flat.keys() | current_flat.keys())
        if saved_flat.get(key, missing) != current_flat.get(key, missing)
    ]


def read_hydra_files(run_dir: Path) -> dict[str, str]:
    """Give back the text of the run's .hydra/*.yaml files, by name."""
    folder = Path(run_dir) / CONFIG_FILE.parent
    return {path.name: path.read_text() for path in sorted(folder.glob("*.yaml"))}


def restore_hydra_files(run_dir: Path, files: dict[str, str]) -> None:
    """Put back .hydra/*.yaml files that Hydra overwrote when a later command reused the folder."""
    for name, text in files.items():

        def write(temporary: str, text: str = text) -> None:
            Path(temporary).write_text(text)

        write_atomically(Path(run_dir) / CONFIG_FILE.parent / name, write)


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
