"""vae_lab's Optuna sweeper (hydra/sweeper=optuna, experiment=search; docs/trackers.md#optuna).

A Hydra sweeper that asks Optuna (>= 4) for each trial's values, runs the trials through Hydra's launcher
(a job folder each, in the sweep folder; at once with hydra/launcher=joblib) and tells Optuna each
job's return value, the summary number `objective` names. The study lives in SQLite and goes on where
it stopped when the same command runs again. It takes the keys of Hydra's own Optuna plugin
(hydra-optuna-sweeper), whose releases for Optuna >= 3 need Hydra 1.4; Hydra finds a plugin only in
the hydra_plugins package, hence this module's place.
"""

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("HYDRA")

DIRECTIONS = ("minimize", "maximize")
RESULTS_FILE = "optimization_results.yaml"  # the best trial, as Hydra's Optuna plugin writes it


class OptunaSearch(Sweeper):
    """Run trials of a persistent Optuna study until it holds `n_trials`, `n_jobs` launched at a time.

    `sampler` is a partial (Hydra's _partial_) of an Optuna sampler: with a seed, a study that goes on
    with k trials already gets seed + k, so that its new trials are not those of its first run again.
    """

    def __init__(
        self,
        sampler: Callable[..., Any],
        direction: str,
        study_name: str,
        storage: Optional[str],
        n_trials: int,
        n_jobs: int,
        params: Optional[DictConfig] = None,
    ):
        if direction not in DIRECTIONS:
            raise ValueError(f"hydra.sweeper.direction={direction!r}: it must be minimize or maximize")
        for key, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"hydra.sweeper.{key}={value!r}: it must be a positive integer")
        self.sampler, self.direction, self.study_name, self.storage = sampler, direction, study_name, storage
        self.n_trials, self.n_jobs = n_trials, n_jobs
        self.params = {str(key): str(value) for key, value in (params or {}).items()}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.parser = OverridesParser.create(config_loader=hydra_context.config_loader)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        # the search space: hydra.sweeper.params, then sweeps given on the command line; the rest is fixed
        overrides = self.parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + arguments)
        space = {o.get_key_element(): distribution(o) for o in overrides if o.is_sweep_override()}
        fixed = [o.input_line for o in overrides if not o.is_sweep_override()]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)  # SQLite makes its file, not the folder
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            direction=self.direction,
            load_if_exists=True,  # the same command again goes on with the study
        )
        seed = getattr(self.sampler, "keywords", {}).get("seed")
        done = len(study.trials)
        study.sampler = self.sampler(seed=seed + done) if seed is not None and done else self.sampler()
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            log.warning(f"trial {trial.number} of an earlier search did not finish: marked failed")
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        log.info(f"Study {self.study_name} ({self.direction}) in {self.storage}: {len(study.trials)} trials")
        while (left := self.n_trials - len(study.trials)) > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, left))]
            batch = [fixed + [f"{key}={value}" for key, value in t.params.items()] for t in trials]
            returns = self.launcher.launch(batch, initial_job_idx=trials[0].number)
            for trial, job in zip(trials, returns, strict=True):
                value = job_value(job)
                if value is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, value)
        write_best(study, sweep_dir / RESULTS_FILE)


def distribution(override: Override):
    """Give back the Optuna distribution of a Hydra sweep: interval(a, b) (tag(log, ...) for a log scale),
    ints from int to int; choice(...) and range(...) as categories."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log_scale)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    return CategoricalDistribution(list(override.sweep_iterator()))


def job_value(job) -> Optional[float]:
    """Give back a job's return value (the objective), None where the job failed or gave back nothing."""
    try:
        value = job.return_value
    except Exception:  # the job raised: Hydra's launcher has logged it
        return None
    return float(value) if isinstance(value, (int, float)) else None


def write_best(study, path: Path) -> None:
    """Write the best trial's values and objective (nothing where no trial completed)."""
    import optuna

    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        log.warning(f"no trial of {study.study_name} completed: no best trial")
        return
    best = {"name": "optuna", "best_params": study.best_params, "best_value": study.best_value}
    OmegaConf.save(OmegaConf.create(best), path)
    log.info(f"Best parameters: {study.best_params}")
    log.info(f"Best value: {study.best_value}")
