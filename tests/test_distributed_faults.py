"""Faults in a run of two processes (torchrun, gloo on the CPU): a stop signal, and a process that dies.

The MLP VAE on a tiny IDX MNIST, one thread per process, evaluation off.
"""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from tests import warm_start
from tests.conftest import REPO, python, wait_until, write_fake_mnist
from vae_lab.runs import load_run

RUN = [
    "device=cpu",  # gloo, also on a machine with a GPU
    "model=mlp_vae",
    "trainer.batch_size=32",
    "trainer.threads=1",
    "trainer.progress=false",
    "trainer.figures=false",  # the figures have tests of their own
    "evaluation.enabled=false",
]
TORCHRUN = [python(), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def command(data_root: Path, run_dir: Path, *overrides: str, processes: int = 2) -> list[str]:
    start = TORCHRUN if processes == 2 else [python()]
    return [
        *start,
        "-m",
        "vae_lab.train",
        f"data.root={data_root}",
        f"hydra.run.dir={run_dir}",
        *RUN,
        *overrides,
    ]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def run_processes(run_dir: Path) -> dict[int, int]:
    """Give back {pid: RANK} of the training processes whose command line names run_dir."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if f"hydra.run.dir={run_dir}" in cmdline and "vae_lab.train" in cmdline:
            ranks = [item.split("=", 1)[1] for item in environ if item.startswith("RANK=")]
            found[int(entry.name)] = int(ranks[0]) if ranks else -1  # -1: torchrun itself
    return found


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("data"), train_count=2048, test_count=128)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the processes through /proc")
def test_a_process_that_dies_ends_the_run_leaves_no_process_and_keeps_the_checkpoint(tmp_path, data_root):
    run_dir = tmp_path / "run"
    job = subprocess.Popen(
        command(data_root, run_dir, "trainer.epochs=50"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: (run_dir / "checkpoint.pt").exists(), job, "the first checkpoint")
    rank_one = [pid for pid, rank in run_processes(run_dir).items() if rank == 1]
    assert rank_one, "process 1 was not found"
    os.kill(rank_one[0], signal.SIGKILL)
    _, errors = job.communicate(timeout=120)
    assert job.returncode != 0
    assert run_processes(run_dir) == {}  # torchrun and both processes are gone
    record = summary(run_dir)
    assert record["status"] == "failed"
    assert "a process of this 2-process run stopped, so the run stopped too" in record["error"]
    assert "trainer.resume=true" in record["error"]
    loaded = load_run(run_dir)  # the last checkpoint, whole
    assert loaded.model is not None


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="POSIX signals")
def test_sigterm_stops_both_processes_at_one_step_and_the_resumed_run_matches_one_process(
    tmp_path, data_root
):
    """SIGTERM to torchrun (what a cluster sends) reaches both processes; they agree on one step,
    process 0 saves it, and the resumed two-process run ends where one uninterrupted process ends."""
    run_dir, reference = tmp_path / "run", tmp_path / "one"
    reference_run = warm_start.run(
        command(data_root, reference, "trainer.epochs=2", processes=1),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert reference_run.returncode == 0, reference_run.stderr[-3000:]
    job = warm_start.Popen(  # torchrun, forked: its two processes are started fresh
        command(data_root, run_dir, "trainer.epochs=2"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(
        lambda: (run_dir / "train.log").exists() and "step 16/64" in (run_dir / "train.log").read_text(),
        job,
        "step 16 of the first epoch",
    )
    job.send_signal(signal.SIGTERM)
    job.wait(timeout=120)
    record = summary(run_dir)
    assert record["status"] == "interrupted", record
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert saved["position"] is not None  # mid-epoch
    resumed = warm_start.run_as_torchrun(  # two processes again, started as torchrun starts them
        [*command(data_root, run_dir, "trainer.epochs=2", processes=1), "trainer.resume=true"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert summary(run_dir)["status"] == "completed" and summary(run_dir)["world_size"] == 2
    ours = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    theirs = torch.load(reference / "checkpoint.pt", weights_only=False)["model"]
    largest = max(value.abs().max().item() for value in theirs.values())
    assert max((ours[key] - theirs[key]).abs().max().item() for key in theirs) / largest < 1e-4
    assert summary(run_dir)["test"]["total"] == pytest.approx(summary(reference)["test"]["total"], rel=1e-4)
