"""Faults of sweeps: a killed sweep started again, a preempted submitit job, a stop signal after training.

The runs are those of test_reliability.py: the conv VAE on a tiny IDX MNIST, one thread, evaluation and
figures off.
"""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests import test_reliability as reliability
from tests import warm_start
from tests.conftest import REPO, python
from tests.test_reliability import (
    command,
    epochs_logged,
    folder_bytes,
    said,
    same_numbers,
    summary,
    wait_for_epochs,
)

# test_reliability.py's fixtures: its data, and its uninterrupted run (both made once in the session)
data_root = reliability.data_root
uninterrupted = reliability.uninterrupted


FOLDER_TAIL = "trainer.batch_size=64,trainer.epochs=3"  # the other overrides are left out of folder names


def sweep_command(data_root: Path, sweep_dir: Path) -> list[str]:
    return [*command(data_root, f"hydra.sweep.dir={sweep_dir}", multirun=True), "loss=recon,kl,elbo"]


def test_a_killed_sweep_started_again_skips_finished_jobs_and_resumes_the_others(tmp_path, data_root):
    sweep_dir = tmp_path / "sweep"
    process = warm_start.Popen(
        sweep_command(data_root, sweep_dir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    second = sweep_dir / f"1_loss=kl,{FOLDER_TAIL}"
    wait_for_epochs(second, 1, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    first = sweep_dir / f"0_loss=recon,{FOLDER_TAIL}"
    finished = folder_bytes(first)
    assert summary(first)["status"] == "completed"

    result = warm_start.run(
        sweep_command(data_root, sweep_dir), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.name for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    assert jobs == [f"{name},{FOLDER_TAIL}" for name in ("0_loss=recon", "1_loss=kl", "2_loss=elbo")]
    after = folder_bytes(first)
    after.pop("train.log"), finished.pop("train.log")
    assert after == finished  # the finished job was skipped, not trained again
    assert summary(second)["resumed_after_epoch"] >= 1
    for job in jobs:
        assert summary(sweep_dir / job)["status"] == "completed"
        assert epochs_logged(sweep_dir / job) == [1, 2, 3]

    compared = warm_start.run(
        [python(), "-m", "vae_lab.compare", str(sweep_dir)], cwd=REPO, capture_output=True, text=True
    )
    assert compared.returncode == 0, compared.stderr[-3000:]
    rows = (sweep_dir / "comparison.csv").read_text().splitlines()[1:]
    assert len(rows) == 3  # each run once


def job_processes(marker: str) -> list[int]:
    """Give back the pids of submitit job processes whose command line names marker."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "submitit.core._submit" in cmdline and marker in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="SIGUSR2 is a POSIX signal")
def test_a_preempted_submitit_job_is_requeued_and_resumes_from_its_own_checkpoint(
    tmp_path, data_root, uninterrupted
):
    """SIGUSR2 is what submitit (and SLURM, through it) sends a job before its time limit or a
    preemption; submitit_local requeues the job in the same folder as SLURM would."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep_dir = tmp_path / "submitit"
    process = warm_start.Popen(
        [*command(data_root, f"hydra.sweep.dir={sweep_dir}", multirun=True), "hydra/launcher=submitit_local"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    job = sweep_dir / "0_"
    deadline = time.monotonic() + 120
    while not (job.is_dir() and epochs_logged(job)):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
        job = next((p for p in sweep_dir.glob("0_*") if p.is_dir()), job)
    time.sleep(0.3)
    pids = job_processes(str(sweep_dir))
    assert pids, "the submitit job process was not found"
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)
    assert process.wait(timeout=300) == 0
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").rglob("*.out"))
    assert "Requeued" in logs or "requeue" in logs.lower()
    assert summary(job)["status"] == "completed" and summary(job)["resumed_after_epoch"] is not None
    same_numbers(job, uninterrupted)


# a stop signal that arrives after training, while the run is being drawn (or evaluated)
SIGNAL_WHILE_DRAWING = """
import os, signal
import vae_lab.figures.run_figures as run_figures
import vae_lab.train as train
draw = run_figures.draw_run_figures
def draw_then_signal(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return draw(*args, **kwargs)
run_figures.draw_run_figures = draw_then_signal
train.main()
"""


def test_a_stop_signal_after_training_lets_the_run_finish_then_stops_the_sweep(tmp_path, data_root):
    sweep = tmp_path / "sweep"
    latents, drawn = "model.latent_dim=2,3", "trainer.figures=true"  # the stop comes while they are drawn
    overrides = command(data_root, latents, "trainer.epochs=1", drawn, f"hydra.sweep.dir={sweep}")[3:]
    result = warm_start.run(
        [python(), "-c", SIGNAL_WHILE_DRAWING, "-m", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 128 + signal.SIGTERM, said(result)[-3000:]
    assert "Traceback" not in said(result) and "arrived after training" in said(result)
    jobs = sorted(path.name for path in sweep.iterdir() if path.is_dir())
    assert len(jobs) == 1 and jobs[0].startswith("0_model.latent_dim=2")  # none started after it
    assert summary(sweep / jobs[0])["status"] == "completed" and (sweep / jobs[0] / "samples.png").is_file()
