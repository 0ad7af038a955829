"""What the command line checks before Hydra starts, and what a job learns of the launcher that runs it.

Each check ends the command with one line where Hydra would end it with a traceback.
"""

import importlib.util
import os
from pathlib import Path

from omegaconf import OmegaConf

# launcher choices -> the optional plugin package each one needs (pip install -e .[launchers])
LAUNCHER_PLUGINS = {
    "joblib": "hydra_plugins.hydra_joblib_launcher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
    "slurm": "hydra_plugins.hydra_submitit_launcher",
}


def require_launcher_plugin(arguments: list[str]) -> None:
    """Exit with an install hint when the command line asks for a launcher whose plugin is missing."""
    for argument in arguments:
        name = argument.partition("hydra/launcher=")[2]
        plugin = LAUNCHER_PLUGINS.get(name)
        if plugin and importlib.util.find_spec(plugin) is None:
            raise SystemExit(
                f"hydra/launcher={name} needs the optional Hydra launcher plugins, which are not installed: "
                "run `pip install -c constraints.txt -e '.[launchers]'` in the project folder."
            )


def require_sweeper_plugin(arguments: list[str]) -> None:
    """Make vae_lab's Optuna sweeper known to Hydra, and exit with an install hint when the command line
    asks for a search (hydra/sweeper=optuna, or experiment=search) and Optuna is missing.

    Hydra finds plugins by listing the hydra_plugins package, which misses one that an editable install
    (`pip install -e .`) maps from the checkout; Plugins.register is Hydra's way to name it itself.
    """
    if wants_a_search(arguments) and importlib.util.find_spec("optuna") is None:
        raise SystemExit(
            "hydra/sweeper=optuna needs Optuna, which is not installed: run "
            "`pip install -c constraints.txt -e '.[optuna]'` in the project folder."
        )
    from hydra.core.plugins import Plugins

    from hydra_plugins.vae_lab_search import OptunaSearch

    Plugins.instance().register(OptunaSearch)


def wants_a_search(arguments: list[str]) -> bool:
    """True where the command line asks Optuna to search (hydra/sweeper=optuna, or experiment=search)."""
    return any(a in ("hydra/sweeper=optuna", "experiment=search") for a in arguments)


def require_search_objective(arguments: list[str], conf_dir: Path) -> None:
    """Exit with one line, before the first trial, where a search's objective cannot be computed: no
    `objective` named, or an evaluation metric with the evaluation off. Optuna would run every trial
    and then fail with a traceback ("No trials are completed yet")."""
    if not wants_a_search(arguments) or not any(a in ("-m", "--multirun") for a in arguments):
        return
    from hydra import compose, initialize_config_dir

    from vae_lab.config import check_config
    from vae_lab.errors import ConfigError

    overrides = [
        argument
        for argument in arguments
        if not argument.startswith(("-", "hydra.", "hydra/", "+hydra", "~hydra"))
        and not any(mark in argument.partition("=")[2] for mark in (",", "(", "["))  # sweep syntax
    ]
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        check_config(cfg)
    except ConfigError as error:
        raise SystemExit(f"the search cannot start: {error}") from None
    except Exception:  # anything else Hydra's own run reports as it does
        return
    if cfg.objective is None:
        raise SystemExit(
            "the search cannot start: hydra/sweeper=optuna minimises (or maximises) a number each run gives "
            "back, and objective is null. Name a summary.json key, e.g. objective=metrics.iwae.nll_k100 "
            "(experiment=search sets it), or sweep a grid with the basic sweeper instead."
        )


def require_writable_output(arguments: list[str]) -> None:
    """Exit with a message when the output folder cannot be made: Hydra would fail with a traceback.

    A folder given on the command line is made now, as Hydra would make it (a parent that looks
    writable can still refuse, as /proc does); for the default outputs/ the nearest existing parent
    must be a writable folder.
    """
    given = [
        Path(value)
        for key, value in (key_and_value(argument) for argument in arguments)
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value and "${" not in value
    ]
    folder = given[-1] if given else Path("outputs")
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    reason = (
        None
        if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
        else f"{existing} is not a writable folder"
    )
    if reason is None and given:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            reason = f"{error.strerror or error}"
    if reason is not None:
        raise SystemExit(
            f"cannot make the output folder {folder}: {reason}. Point hydra.run.dir (a run) or "
            "hydra.sweep.dir (a sweep) at a folder you can write to."
        )


LAUNCHER_PID = "VAE_LAB_LAUNCHER_PID"  # set by main(); the processes a launcher starts inherit it


def in_worker_process() -> bool:
    """Whether this job runs in a process a launcher started (a joblib worker), not in the launcher's
    own: such a job stops when its parent is gone, so a killed sweep leaves nothing training."""
    launcher = os.environ.get(LAUNCHER_PID)
    return launcher is not None and launcher != str(os.getpid())


def parallel_jobs(hydra_cfg) -> int:
    """Give back how many jobs the launcher runs at once on this machine (joblib's n_jobs), else 1."""
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=None)
    if not n_jobs:
        return 1
    cores = os.cpu_count() or 1
    return max(1, cores + 1 + n_jobs if n_jobs < 0 else min(n_jobs, cores))  # joblib: -1 is every core


def key_and_value(argument: str) -> tuple[str, str]:
    """An override's key and its value as Hydra reads it: hydra.run.dir='/a b/c' gives /a b/c, unquoted.
    What Hydra's grammar does not parse keeps its text after the first "=", and Hydra says what is wrong."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    key, _, value = argument.partition("=")
    try:
        parsed = OverridesParser.create().parse_override(argument)
    except HydraException:
        return key, value
    parsed_value = parsed.value()
    return parsed.key_or_group, parsed_value if isinstance(parsed_value, str) else value
