"""The Hydra app: compose -> check -> run (build, fit, evaluate, draw), with the run's status kept.

    python -m vae_lab.train model=ae loss=recon model.latent_dim=16 trainer.epochs=3 seed=1
    python -m vae_lab.train <the same overrides> trainer.resume=true hydra.run.dir=<its run folder>

Everything a run makes lands in its Hydra run folder (outputs/<date>/<time>/). Read `run` first:
it is one job from config to summary.json; the loop itself is vae_lab/training/loop.py.
"""

import difflib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from vae_lab.config import CONF_DIR, check_config, register_schemas
from vae_lab.devices import resolve_device
from vae_lab.errors import VaeLabError
from vae_lab.evaluation import inference
from vae_lab.evaluation.suite import Evaluation, evaluate_model, one_line
from vae_lab.files import unwritable, write_json
from vae_lab.legacy_configs import upgrade_legacy_overrides
from vae_lab.settings import RunSettings, read_settings
from vae_lab.speed.memory import hand_back_freed_memory
from vae_lab.training import checkpoint as checkpoints
from vae_lab.training.build import build, build_data, check_model_fits_data, instantiate_node
from vae_lab.training.checkpoint import Checkpoint
from vae_lab.training.distributed import (
    ONE_PROCESS,
    Ranks,
    check_data_parallel_run,
    check_last_batch,
    end_process_group,
    follower_overrides,
    is_lost_process_error,
    join_run,
    lost_process_reason,
    process_group_started,
    quiet_follower_logging,
    ranks_from_environment,
    refuse_sweep_under_torchrun,
    share_run_dir,
    start_process_group,
    synchronise_batchnorm,
    wait_for_the_others_to_finish,
)
from vae_lab.training.launchers import (
    LAUNCHER_PID,
    in_worker_process,
    parallel_jobs,
    require_launcher_plugin,
    require_search_objective,
    require_sweeper_plugin,
    require_writable_output,
)
from vae_lab.training.loggers import NoLogger, run_context
from vae_lab.training.loop import TrainingDiverged, TrainStep, fit, format_parts
from vae_lab.training.run_folder import CHECKPOINT_FILE, SUMMARY_FILE, flatten, is_finite_number, read_summary
from vae_lab.training.stopping import RunInterrupted, StopSignals, watch_launcher

log = logging.getLogger("vae_lab")
register_schemas()


def run(
    settings: RunSettings,
    run_dir: Path,
    parallel_jobs: int = 1,
    checkpoint: Optional[Checkpoint] = None,
    stop: Optional[StopSignals] = None,
    job_number: Optional[int] = None,
    ranks: Ranks = ONE_PROCESS,
) -> Optional[dict[str, Any]]:
    """Train (from `checkpoint`, where given), evaluate and draw one run into run_dir; give back its
    summary (also written to summary.json). job_number: the run's number in its sweep, which picks its
    GPU on a machine with several (devices.resolve_device). ranks: this process's place in a run of
    several (vae_lab/training/distributed.py); all train, process 0 alone evaluates and writes, and
    the others give back None. settings: read_settings of the config that starting_point checked, once,
    before anything was read or written."""
    started = time.perf_counter()
    set_threads(settings.threads, max(parallel_jobs, ranks.local_world_size))
    torch.manual_seed(settings.seed)
    device = resolve_device(settings.device, job_number, ranks.local_rank if ranks.is_distributed else None)
    check_data_parallel_run(ranks, settings.batch_size, settings.device, device)
    parts = settings.parts
    model, loss, optimizer = build(parts.model, parts.loss, parts.optimizer, device)  # the plain model
    data = build_data(parts.data, device)
    check_model_fits_data(model, data.test_images)
    check_last_batch(ranks, settings.batch_size, len(data.train_images))
    if ranks.is_distributed and settings.sync_batchnorm:
        model = synchronise_batchnorm(model, device)  # before the speed transform: no fused BatchNorm
    log.info(
        f"{type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters), "
        f"{loss!r}, {len(data.train_images):,} training images, device {device}"
        + (f", {ranks.world_size} processes" if ranks.is_distributed else "")
    )
    # the trackers, besides the run folder's own files: process 0's, once every part has been checked
    logger = instantiate_node(parts.logger, "logger", run_dir=run_dir) if ranks.is_main else NoLogger()
    step = TrainStep.sped_up(model, loss, optimizer, settings.speed, ranks)  # faster layers: vae_lab/speed
    try:
        logger.start(run_context(settings.config, run_dir))
        last = fit(step, data, settings.fit, run_dir, checkpoint, stop, logger)
        if not ranks.is_main:
            return None  # process 0 evaluates the trained model once and writes the run's files
        hand_back_freed_memory()  # what training kept for its steps: not part of evaluation's peak
        evaluation = evaluate_run(settings, model, data, loss, last, logger)
        figures = []
        if settings.figures:  # matplotlib is imported here: by the process that draws, not by every rank
            from vae_lab.figures.run_figures import draw_run_figures

            figures = draw_run_figures(model, data, run_dir, settings.seed, evaluation)
            logger.log_figures([run_dir / name for name in figures], step=last["epoch"])
        summary = {
            "status": "completed",
            "epochs": last["epoch"],
            "test": last["test"],
            "train": last["train"],
            "units": "nats per image",
            "train_images": len(data.train_images),
            "test_images": len(data.test_images),
            "device": str(device),
            "world_size": ranks.world_size,  # processes that trained the run together
            "batch_per_process": settings.batch_size // ranks.world_size,
            "threads": torch.get_num_threads(),
            "wall_time_s": round(time.perf_counter() - started, 2),
            "peak_memory_mib": peak_memory_mib(),
            "resumed_after_epoch": checkpoint.epoch if checkpoint is not None else None,
            "figures": figures,
            "metrics": None if evaluation is None else evaluation.metrics,
        }
        logger.finish(summary)
    finally:
        logger.close()
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary


def evaluate_run(settings: RunSettings, model, data, loss, last: dict, logger) -> Optional[Evaluation]:
    """Give back the evaluation suite's Evaluation (metrics, the samples' class histograms, the test
    codes), None where evaluation.enabled is false; hand the metrics and the test codes to the trackers."""
    evaluation = None
    if settings.evaluation.enabled:
        log.info("evaluating on the test split (docs/metrics.md)")
        evaluation = evaluate_model(
            model,
            data,
            settings.evaluation,
            settings.seed,
            settings.data_root,
            settings.progress,
            last["test"],
            loss.likelihood,
        )
        log.info(one_line(evaluation.metrics))
        logger.log_metrics(evaluation.metrics, step=last["epoch"])
    if logger.embedding_images:  # the first test images' codes, for TensorBoard's projector
        shown = data.test_images[: logger.embedding_images]
        labels = [data.class_names[label] for label in data.test_labels[: len(shown)].tolist()]
        codes = inference.encode_means(model, shown) if evaluation is None else evaluation.test_codes
        logger.log_embedding(codes[: len(shown)], labels, shown / 255, last["epoch"])
    return evaluation


def set_threads(threads: Optional[int], parallel_jobs: int) -> None:
    """torch.set_num_threads at the start of the job (an environment variable would come too late).

    threads=None leaves torch's default alone in a job of its own, and gives each of several parallel
    jobs its share of the cores, so they never oversubscribe the machine.
    """
    if threads is None and parallel_jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // parallel_jobs)
    if threads is not None:
        torch.set_num_threads(threads)


def peak_memory_mib() -> Optional[int]:
    """Give back this process's peak resident memory in MiB (None where the system does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10))  # macOS: bytes, Linux: KiB


def failure_record(error: BaseException) -> dict[str, str]:
    """Give back summary.json of a run that did not complete: its status and what stopped it."""
    message = str(error) if isinstance(error, VaeLabError) else f"{type(error).__name__}: {error}"
    if isinstance(error, TrainingDiverged):
        status = "diverged"
    elif isinstance(error, (RunInterrupted, KeyboardInterrupt, SystemExit)):
        status = "interrupted"  # SystemExit: submitit requeued the job after its checkpoint
    else:
        status = "failed"
    return {"status": status, "error": message}


def write_failure(run_dir: Path, error: BaseException) -> None:
    try:
        write_json(run_dir / SUMMARY_FILE, failure_record(error))
    except VaeLabError as write_error:  # a full disk: say so, and still report the first error
        log.error(str(write_error))


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def train_app(cfg: DictConfig) -> Optional[float]:
    """The Hydra app: one job of a run or of a sweep. Checks come first and touch nothing; a job that
    fails leaves its status in summary.json; one failed job never stops its sweep.

    It gives back the summary's number that `objective` names (for hydra/sweeper=optuna), else None.
    """
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    ranks = join_data_parallel_run(run_dir)
    try:
        settings, checkpoint = starting_point(cfg, run_dir, in_sweep, ranks.is_main)
    except VaeLabError:
        return None  # a job of a sweep that was refused: the sweep goes on
    finished = read_summary(run_dir).get("status") == "completed"
    if checkpoint and finished and checkpoint.epoch >= settings.epochs:
        if ranks.is_main:
            checkpoints.restore_hydra_files(run_dir, checkpoint.hydra_files)
        log.info(f"{run_dir} finished before ({checkpoint.epoch} epochs): left as it is")
        return objective_value(settings.objective, read_summary(run_dir))
    launcher = watch_launcher() if in_worker_process() else None
    if launcher is not None:
        launcher.busy.set()
    try:
        with StopSignals(launcher) as stop:
            job_number = hydra_cfg.job.num if in_sweep else None
            summary = run(settings, run_dir, parallel_jobs(hydra_cfg), checkpoint, stop, job_number, ranks)
            wait_for_the_others_to_finish(ranks)
            late_stop = (stop.signum, stop.name) if stop.requested else None  # during evaluation
    except BaseException as error:
        handle_failure(error, run_dir, in_sweep, ranks)
        return None
    finally:
        if launcher is not None:
            launcher.busy.clear()
        end_process_group()
    if summary is None:  # a process of a data-parallel run other than process 0: its part is done
        return None
    log.info(f"Run folder: {run_dir}")
    log.info(
        f"Figures: {', '.join(summary['figures']) or 'none (trainer.figures=false)'}  |  "
        f"test {format_parts(summary['test'])} "
        f"(nats per image)  |  wall time {summary['wall_time_s']:.0f} s"
    )
    if late_stop:  # training had ended: the run finished; the sweep stops before its next job
        log.warning(
            f"{late_stop[1]} arrived after training, so this run finished first; stopping here. "
            "Run the same command again to go on with the rest of the sweep."
        )
        raise SystemExit(128 + late_stop[0])
    return objective_value(settings.objective, summary)


def join_data_parallel_run(run_dir: Path) -> Ranks:
    """Give back this process's Ranks; in a run of several processes (torchrun's, or a submitit job's
    tasks), the process group is up, every process trains into process 0's run folder, and only
    process 0 writes to the run's log file."""
    started_by_torchrun = process_group_started()  # main() started it: processes 1..N-1 wait for the folder
    ranks = join_run()
    if started_by_torchrun and ranks.is_main:
        share_run_dir(ranks, str(run_dir))
    if not ranks.is_main:
        quiet_follower_logging()
    return ranks


def starting_point(
    cfg: DictConfig, run_dir: Path, in_sweep: bool, writes: bool = True
) -> tuple[RunSettings, Optional[Checkpoint]]:
    """Give back the run's settings (read once, here) and the checkpoint the job goes on from (None: from
    scratch), after the checks, which touch nothing. A refused single run exits with status 1; a refused
    job of a sweep raises its VaeLabError.
    writes=False (processes 1..N-1 of a data-parallel run): process 0 keeps the folder's record."""
    held_a_run = (run_dir / CHECKPOINT_FILE).exists()
    try:
        check_config(cfg)
        settings = read_settings(cfg, run_dir)
        resume = cfg.trainer.resume or in_sweep  # a sweep's job goes on from its folder: how sweeps restart
        must_exist = cfg.trainer.resume and not in_sweep
        key, speed = settings.resume_key, settings.speed
        return settings, checkpoints.resume_point(run_dir, key, speed, resume, must_exist)
    except VaeLabError as error:
        if not writes:
            pass
        elif held_a_run:  # the folder's run stays as it was: Hydra's rewritten config files are put back
            checkpoints.put_back_hydra_files(run_dir)
        else:
            write_failure(run_dir, error)
        log.error(str(error))
        if not in_sweep:
            raise SystemExit(1) from None
        raise


def handle_failure(error: BaseException, run_dir: Path, in_sweep: bool, ranks: Ranks = ONE_PROCESS) -> None:
    """Keep a job's failure in its summary.json, then say it in one line, exit, or raise, as it deserves."""
    if ranks.is_distributed and is_lost_process_error(error):
        error = VaeLabError(
            f"a process of this {ranks.world_size}-process run stopped, so the run stopped too "
            f"({lost_process_reason(error)}); "
            f"the last checkpoint in {run_dir} is kept: go on with the same command plus trainer.resume=true "
            f"hydra.run.dir={run_dir}"
        )
    if ranks.is_main:
        write_failure(run_dir, error)
    if isinstance(error, RunInterrupted):
        log.error(str(error))
        raise SystemExit(128 + error.signum) from None  # a stop signal ends a sweep too
    if isinstance(error, OSError):
        error = unwritable(getattr(error, "filename", None) or run_dir, error)
    if isinstance(error, VaeLabError):
        log.error(str(error))
        if not in_sweep:
            raise SystemExit(1) from None
    elif in_sweep and isinstance(error, Exception):
        # one failed job must not stop the sweep: its folder keeps the error for `compare`
        log.exception(f"job failed: {run_dir}")
    else:
        raise error  # a bug in a single run, or Ctrl-C: the record is kept, the traceback is shown


def objective_value(key: Optional[str], summary: dict[str, Any]) -> Optional[float]:
    """Give back summary[key] (a flattened key: metrics.iwae.nll_k100) as a float; None where key is None
    or the run has no such finite number (then the error says which keys it has)."""
    if key is None:
        return None
    flat = flatten(summary)
    value = flat.get(key)
    if is_finite_number(value):
        return float(value)
    numbers = [name for name, v in flat.items() if is_finite_number(v)]
    close = difflib.get_close_matches(key, numbers, n=3)
    hint = f"; the closest keys it has: {', '.join(close)}" if close else ""
    log.error(f"objective={key}: this run's summary has no number there (it has {value!r}){hint}")
    return None


def main() -> None:
    """The command line (python -m vae_lab.train, vae-lab-train): Hydra overrides in sys.argv."""
    os.environ[LAUNCHER_PID] = str(os.getpid())
    sys.argv[1:] = upgrade_legacy_overrides(sys.argv[1:])  # loss.likelihood=gaussian still works
    ranks = ranks_from_environment()
    if ranks.is_distributed:  # torchrun started this process: one run over world_size processes
        refuse_sweep_under_torchrun(sys.argv[1:])
        start_process_group(ranks)
        if not ranks.is_main:  # train into process 0's run folder, which it sends once Hydra made it
            sys.argv[1:] += follower_overrides(share_run_dir(ranks, None))
    require_launcher_plugin(sys.argv[1:])
    require_sweeper_plugin(sys.argv[1:])
    require_search_objective(sys.argv[1:], CONF_DIR)  # before any folder is made
    require_writable_output(sys.argv[1:])
    try:
        train_app()
    finally:
        end_process_group()


if __name__ == "__main__":
    main()
