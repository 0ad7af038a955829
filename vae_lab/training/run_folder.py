"""A run folder's files: their names, metrics.jsonl and summary.json, and finding the runs below a folder
(the checkpoint's own format: vae_lab/training/checkpoint.py; reading a whole run back: vae_lab/runs.py)."""

import json
import math
import re
from pathlib import Path
from typing import Any

from vae_lab.files import write_atomically

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = Path(".hydra") / "config.yaml"


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
