"""What a tracker knows of a run besides its numbers: its name, sweep, hyper-parameters and config, read
from Hydra where it runs the job."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from vae_lab.operational import is_operational


@dataclass
class RunContext:
    """What a tracker needs to know of a run besides its numbers."""

    name: str  # the overrides that name its sweep folder, and its seed (loss=kl,seed=1)
    group: Optional[str] = None  # a sweep job's sweep folder; None for a single run
    hparams: dict[str, Any] = field(default_factory=dict)  # those overrides: key -> bool, int, float, str
    overrides: list[str] = field(default_factory=list)  # every override that changes what the run computes
    config: dict[str, Any] = field(default_factory=dict)  # the whole resolved config


def run_context(config: dict[str, Any], run_dir: Path) -> RunContext:
    """Give back the run's name, sweep folder, hyper-parameters and config (the resolved config, given),
    from Hydra where it runs the job.

    The hyper-parameters are the job's overrides that name its sweep folder (a sweep's point: Hydra's
    override_dirname, less its exclude_keys: evaluation settings, threads, ...) and its seed, if given.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    overrides, group, unnamed = [], None, set()
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        overrides = list(hydra_cfg.overrides.task)
        unnamed = set(hydra_cfg.job.config.override_dirname.exclude_keys)  # as job folders are named
        if hydra_cfg.mode == RunMode.MULTIRUN:
            group = str(hydra_cfg.sweep.dir)
    kept = [o for o in overrides if not is_operational(_key(o))]
    named = sorted(o for o in kept if _key(o) not in unnamed)
    seed = [o for o in kept if _key(o) == "seed"]
    return RunContext(
        name=",".join(named + seed) or run_dir.name,
        group=group,
        hparams=parse_overrides(named + seed),
        overrides=kept,
        config=config,
    )


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Give back {key: value} of Hydra overrides, each value typed as Hydra reads it (bool, int, float or
    str; anything else as its text); a deletion (~key) is left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.is_delete():
            continue
        value = override.value()
        if not isinstance(value, (bool, int, float, str)):
            value = override.get_value_element_as_str()
        parsed[override.get_key_element()] = value
    return parsed
