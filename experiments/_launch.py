"""Run the Hydra app with a study's fixed overrides first; command-line overrides follow and win."""

import importlib.util
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException

from vae_lab.errors import VaeLabError
from vae_lab.evaluation.classifier import load_or_train_for_config
from vae_lab.train import CONF_DIR, main


def all_jobs_at_once(jobs: int, arguments: list[str]) -> list[str]:
    """Give back the launcher overrides that run a study's jobs at once where that is faster, when the
    joblib plugin is installed: on a CPU all of them, one thread each (docs/sweeps.md, Launchers); on a
    machine with several GPUs as many as there are GPUs, each job on its own (round robin,
    devices.resolve_device); on one GPU, none (the jobs run one after another). Jobs run at once would
    share one terminal line with their progress bars, so each logs a line per quarter epoch instead
    (`trainer.progress=true` on the command line brings the bars back). A launcher that the command
    line's `arguments` name (`hydra/launcher=basic`, `hydra/launcher=slurm`) is theirs: none is added."""
    if any(argument.startswith("hydra/launcher=") for argument in arguments):
        return []
    if importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is None:
        return []
    if torch.cuda.is_available():
        jobs = min(jobs, torch.cuda.device_count())
        if jobs < 2:
            return []
    return ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}", "trainer.progress=false"]


def train_the_classifier_once(arguments: list[str]) -> None:
    """Train (or find cached) the digit classifier the jobs' evaluation needs, before they start: jobs
    running at once would each train it, since none finds it cached yet."""
    overrides = [arg for arg in arguments if arg.startswith(("data.", "evaluation.", "experiment="))]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    if not cfg.evaluation.enabled:
        return
    # Hydra has not set up logging yet: without this, its minutes of training would pass in silence
    # when progress bars are off or the output is not a terminal (each epoch logs a line)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logger = logging.getLogger("vae_lab")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        load_or_train_for_config(cfg)
    except VaeLabError as error:
        raise SystemExit(str(error)) from None
    except InstantiationException as error:  # the data set's loader failed: its own words say why
        raise SystemExit(str(error.__cause__ or error)) from None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def launch(*overrides: str) -> None:
    sys.argv = [sys.argv[0], *overrides, *sys.argv[1:]]
    main()


def epochs_done(run_dir: Path) -> int:
    metrics = run_dir / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def is_finished(run_dir: Path) -> bool:
    summary = run_dir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("status") == "completed"


def train_at_once(commands: dict[Path, list[str]], train_for_s: float | None, walls_file: Path) -> None:
    """Run each `vae_lab.train` command (its run folder -> the command) in a process of its own, all at
    once, each logging to <run folder>.log; past train_for_s seconds, stop them (a stop signal: each saves
    its checkpoint), then go on from each checkpoint with no epoch left, which evaluates it. Write each
    run's seconds from the start to its end into walls_file."""
    started = time.perf_counter()
    jobs = {}
    for run_dir, command in commands.items():
        run_dir.mkdir(parents=True, exist_ok=True)
        log = open(run_dir.with_suffix(".log"), "a")  # noqa: SIM115 (open while the job runs)
        jobs[run_dir] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log, command)
    finished = {}  # seconds from the start to each run's end
    while len(finished) < len(jobs):
        for run_dir, (job, _, _) in jobs.items():
            if run_dir not in finished and job.poll() is not None:
                finished[run_dir] = time.perf_counter() - started
        if train_for_s is not None and time.perf_counter() - started > train_for_s:
            for job, _, _ in jobs.values():
                if job.poll() is None:
                    job.send_signal(signal.SIGTERM)  # the run saves its checkpoint and stops
            for job, _, _ in jobs.values():
                job.wait()
            break
        time.sleep(2)
    evaluations = {}
    for run_dir in [run_dir for run_dir in jobs if not is_finished(run_dir)]:
        _, log, command = jobs[run_dir]
        more = [f"trainer.epochs={max(1, epochs_done(run_dir))}", "trainer.resume=true"]
        evaluations[run_dir] = subprocess.Popen(command + more, stdout=log, stderr=subprocess.STDOUT)
    for run_dir, job in evaluations.items():
        job.wait()
        finished[run_dir] = time.perf_counter() - started
    for _, log, _ in jobs.values():
        log.close()
    walls = {run_dir.name: round(seconds, 1) for run_dir, seconds in finished.items()}
    walls_file.write_text(json.dumps(walls, indent=2) + "\n")
    print(f"all runs done in {time.perf_counter() - started:.0f} s")
