"""Naming runs by what differs among them: each run's settings, the fewest keys that tell the runs
apart, the values common to all of them, and the grid that lines the runs up by those keys.

A run's settings are its group choices (model=vae, loss=elbo), its command-line and sweep overrides and
its config's values, less where and how it ran (threads, resume, progress, device, data root,
evaluation sizes, speed options, trackers): those never name a run.
"""

from pathlib import Path
from typing import Any

import yaml

from vae_lab.operational import is_operational
from vae_lab.training.run_folder import CONFIG_FILE, flatten

CHOICE_GROUPS = ("model", "loss", "loss/likelihood", "data", "optimizer")  # named by their choice first


# where and how a run ran, not what it is
def is_how(key: str) -> bool:
    """True for a key that says where or how a run ran (vae_lab/operational.py), or that names an
    experiment: a bundle of settings, whose values are compared themselves. Never part of a name."""
    return is_operational(key) or key == "experiment"


def run_settings(run_dir: Path, config_values: bool = True) -> dict[str, str]:
    """Give back a run's settings as {key: value as text}: group choices, then overrides, then (unless
    config_values is false) config values, each key once, where and how it ran left out."""
    run_dir = Path(run_dir)
    settings: dict[str, str] = {}
    choices = _read_yaml(run_dir / ".hydra" / "hydra.yaml").get("hydra", {}).get("runtime", {}).get("choices")
    if not config_values and (choices or {}).get("experiment") is not None:
        settings["experiment"] = str(choices["experiment"])  # stated above a table, never a name
    for group in CHOICE_GROUPS:
        if (choices or {}).get(group) is not None:
            settings[group] = str(choices[group])
    for entry in _read_yaml(run_dir / ".hydra" / "overrides.yaml") or []:
        key, _, value = str(entry).partition("=")
        key = key.lstrip("+~")
        if not is_how(key):
            settings.setdefault(key, value)
    config = _read_yaml(run_dir / CONFIG_FILE) if config_values else {}
    for key, value in sorted(flatten(config or {}).items()):
        if not is_how(key) and not isinstance(value, dict):
            settings.setdefault(key, _text(value))
    return settings


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(map(_text, value)) + "]"
    return str(value)


def distinguishing_keys(runs: list[dict[str, str]]) -> list[str]:
    """Give back the fewest keys, in the runs' order of keys (group choices, overrides, then config
    values; seed last), whose values tell the runs apart as all their settings do. A key whose value
    the keys before it already fix is left out: loss=recon wherever model=ae, so model alone names."""
    order = list(dict.fromkeys(key for settings in runs for key in settings))
    order = [key for key in order if key != "seed"] + (["seed"] if "seed" in order else [])
    kept: list[str] = []
    for key in order:
        values: dict[tuple, set] = {}
        for settings in runs:
            values.setdefault(tuple(settings.get(k, "") for k in kept), set()).add(settings.get(key, ""))
        if any(len(seen) > 1 for seen in values.values()):
            kept.append(key)
    return kept


def varying_keys(runs: list[dict[str, str]]) -> list[str]:
    """Give back every key whose value is not the same in all runs, in the runs' order of keys."""
    order = list(dict.fromkeys(key for settings in runs for key in settings))
    return [key for key in order if len({settings.get(key, "") for settings in runs}) > 1]


def common_values(runs: list[dict[str, str]]) -> dict[str, str]:
    """Give back {key: value} of the settings every run shares, in the first run's order: what a
    comparison states once above its table (given the runs' choices and overrides, not whole configs)."""
    if not runs:
        return {}
    return {key: value for key, value in runs[0].items() if all(s.get(key) == value for s in runs[1:])}


def label(settings: dict[str, str], keys: list[str]) -> str:
    """Name a run by the values of `keys`: 'model=vae, model.latent_dim=16'."""
    return ", ".join(f"{key}={settings.get(key, '')}" for key in keys)


def grid(runs: list[dict[str, str]], keys: list[str]):
    """Give back (rows, columns, cells, fixed) that line the runs up by the keys that name them: rows by
    the first key's values, columns by the second's, cells {(row, column): index of the run}. With
    more keys, each cell holds the run with the first value of each further key, and `fixed` says
    which values those are; with one key, one row; with none, one cell per run."""
    if not keys:
        return [""], [str(i) for i in range(len(runs))], {("", str(i)): i for i in range(len(runs))}, {}
    row_key = keys[0]
    column_key = keys[1] if len(keys) > 1 else None
    fixed = {key: _ordered_values(runs, key)[0] for key in keys[2:]}
    rows = _ordered_values(runs, row_key)
    columns = _ordered_values(runs, column_key) if column_key else [""]
    cells = {}
    for index, settings in enumerate(runs):
        if any(settings.get(key, "") != value for key, value in fixed.items()):
            continue
        cell = (settings.get(row_key, ""), settings.get(column_key, "") if column_key else "")
        cells.setdefault(cell, index)
    return rows, columns, cells, fixed


def _ordered_values(runs: list[dict[str, str]], key: str) -> list[str]:
    """The key's values in the runs' order, numbers in numeric order."""
    values = list(dict.fromkeys(settings.get(key, "") for settings in runs))
    try:
        return sorted(values, key=float)
    except ValueError:
        return values
