"""Faults and bad input: kills, stop signals, restarted sweeps, divergence, damaged files, full disks.

The runs here are the conv VAE (with dropout and batch norm, so every random state matters) on a
tiny IDX MNIST, one thread, evaluation off: a few seconds each.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, python, wait_until, write_fake_mnist
from vae_lab.errors import RunFolderError
from vae_lab.files import write_atomically, write_json
from vae_lab.losses import ELBO
from vae_lab.training.checkpoint import load as load_checkpoint

RUN = [
    "trainer.epochs=3",
    "trainer.batch_size=64",
    "trainer.threads=1",
    "trainer.progress=false",
    "evaluation.enabled=false",
]


def command(data_root: Path, *overrides: str, multirun: bool = False) -> list[str]:
    sweep = ["-m"] if multirun else []
    return [python(), "-m", "vae_lab.train", *sweep, f"data.root={data_root}", *RUN, *overrides]


def train(data_root: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(data_root, f"hydra.run.dir={run_dir}", *overrides),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def said(result: subprocess.CompletedProcess) -> str:
    """Everything a command printed (Hydra logs to stdout, errors of our own go to stderr)."""
    return result.stdout + result.stderr


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def epochs_logged(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_epochs(run_dir: Path, count: int, process: subprocess.Popen) -> None:
    wait_until(lambda: len(epochs_logged(run_dir)) >= count, process, f"{count} epochs were logged")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("data"), train_count=1536, test_count=128)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "uninterrupted"
    result = train(data_root, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def start(data_root: Path, run_dir: Path) -> subprocess.Popen:
    """Start a run in the background; its error output stays readable through communicate()."""
    return subprocess.Popen(
        command(data_root, f"hydra.run.dir={run_dir}"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def same_numbers(run_dir: Path, reference: Path) -> None:
    """The final test numbers and every epoch's training numbers are bit-identical."""
    assert summary(run_dir)["test"] == summary(reference)["test"]
    ours = [json.loads(line)["train"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    theirs = [json.loads(line)["train"] for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert ours == theirs


def test_a_run_killed_mid_epoch_resumes_to_the_numbers_of_an_uninterrupted_run(
    tmp_path, data_root, uninterrupted
):
    run_dir = tmp_path / "killed"
    process = start(data_root, run_dir)
    wait_for_epochs(run_dir, 1, process)
    time.sleep(0.3)  # into the second epoch
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists() or summary(run_dir)["status"] != "completed"

    result = train(data_root, run_dir, "trainer.resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert epochs_logged(run_dir) == [1, 2, 3]
    assert summary(run_dir)["resumed_after_epoch"] >= 1
    same_numbers(run_dir, uninterrupted)


def test_sigterm_saves_a_mid_epoch_checkpoint_and_the_resumed_run_matches(tmp_path, data_root, uninterrupted):
    run_dir = tmp_path / "terminated"
    process = start(data_root, run_dir)
    wait_for_epochs(run_dir, 1, process)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=60)[1].decode()
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in stderr
    record = summary(run_dir)
    assert record["status"] == "interrupted" and "trainer.resume=true" in record["error"]
    position = load_checkpoint(run_dir).position
    assert position is not None and position.epoch == 2 and 0 < position.step < 24  # 24 steps an epoch

    result = train(data_root, run_dir, "trainer.resume=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert epochs_logged(run_dir) == [1, 2, 3]
    same_numbers(run_dir, uninterrupted)


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


def folder_bytes(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def test_a_new_command_into_a_run_folder_is_refused_and_changes_nothing(tmp_path, data_root, uninterrupted):
    run_dir = copy_of(uninterrupted, tmp_path)
    before = folder_bytes(run_dir)
    result = train(data_root, run_dir, "model.latent_dim=4")
    assert result.returncode == 1
    assert "already holds a run" in said(result) and "trainer.resume=true" in said(result)
    after = folder_bytes(run_dir)
    after.pop("train.log", None), before.pop("train.log", None)  # Hydra's log of this command
    assert after == before  # summary, checkpoint, metrics and Hydra's config files as they were


def test_resuming_with_a_different_model_config_names_the_keys_that_differ(
    tmp_path, data_root, uninterrupted
):
    run_dir = copy_of(uninterrupted, tmp_path)
    before = (run_dir / "summary.json").read_bytes()
    result = train(data_root, run_dir, "trainer.resume=true", "model.latent_dim=3", "optimizer.lr=0.01")
    assert result.returncode == 1
    assert "model.latent_dim: 2 in the checkpoint, 3 now" in said(result)
    assert "optimizer.lr: 0.001 in the checkpoint, 0.01 now" in said(result)
    assert "Traceback" not in said(result)
    assert (run_dir / "summary.json").read_bytes() == before


def test_resuming_a_finished_run_leaves_it_alone_and_more_epochs_go_on_from_it(
    tmp_path, data_root, uninterrupted
):
    run_dir = copy_of(uninterrupted, tmp_path)
    before = (run_dir / "summary.json").read_bytes()
    result = train(data_root, run_dir, "trainer.resume=true")
    assert result.returncode == 0 and "left as it is" in said(result)
    assert (run_dir / "summary.json").read_bytes() == before
    result = train(data_root, run_dir, "trainer.resume=true", "trainer.epochs=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert epochs_logged(run_dir) == [1, 2, 3, 4] and summary(run_dir)["resumed_after_epoch"] == 3


def test_resume_without_a_checkpoint_says_how_to_point_at_the_run(tmp_path, data_root):
    result = train(data_root, tmp_path / "fresh", "trainer.resume=true")
    assert result.returncode == 1
    assert "holds no checkpoint.pt" in said(result) and "hydra.run.dir=" in said(result)
    assert summary(tmp_path / "fresh")["status"] == "failed"  # never mistaken for a result


def test_a_truncated_checkpoint_gives_one_clear_message(tmp_path, data_root, uninterrupted):
    run_dir = copy_of(uninterrupted, tmp_path)
    checkpoint = run_dir / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    result = train(data_root, run_dir, "trainer.resume=true", "trainer.epochs=4")
    assert result.returncode == 1
    assert "truncated or corrupt" in said(result) and "Traceback" not in said(result)
    with pytest.raises(RunFolderError, match="truncated or corrupt"):
        load_checkpoint(run_dir)


class DivergingLoss(ELBO):
    """The ELBO, until the 30th training step (the second epoch here), then NaN."""

    steps = 0

    def __call__(self, output, images):
        parts = super().__call__(output, images)
        if torch.is_grad_enabled():
            DivergingLoss.steps += 1
            if DivergingLoss.steps >= 30:
                parts.total = parts.total * float("nan")
        return parts


def test_a_diverging_run_stops_at_once_and_keeps_its_last_good_checkpoint(tmp_path, data_root):
    run_dir = tmp_path / "diverged"
    result = train(data_root, run_dir, "loss._target_=tests.test_reliability.DivergingLoss")
    assert result.returncode == 1
    assert "became nan at epoch 2, step 6 of 24" in said(result) and "Traceback" not in said(result)
    record = summary(run_dir)
    assert record["status"] == "diverged" and "epoch 2, step 6" in record["error"]
    assert load_checkpoint(run_dir).epoch == 1 and epochs_logged(run_dir) == [1]


FOLDER_TAIL = "trainer.batch_size=64,trainer.epochs=3"  # the other overrides are left out of folder names


def sweep_command(data_root: Path, sweep_dir: Path) -> list[str]:
    return [*command(data_root, f"hydra.sweep.dir={sweep_dir}", multirun=True), "loss=recon,kl,elbo"]


def test_a_killed_sweep_started_again_skips_finished_jobs_and_resumes_the_others(tmp_path, data_root):
    sweep_dir = tmp_path / "sweep"
    process = subprocess.Popen(
        sweep_command(data_root, sweep_dir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    second = sweep_dir / f"1_loss=kl,{FOLDER_TAIL}"
    wait_for_epochs(second, 1, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    first = sweep_dir / f"0_loss=recon,{FOLDER_TAIL}"
    finished = folder_bytes(first)
    assert summary(first)["status"] == "completed"

    result = subprocess.run(
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

    compared = subprocess.run(
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
    process = subprocess.Popen(
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


def test_an_atomic_write_that_fails_keeps_the_old_file_and_names_the_problem(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"status": "completed"})

    def disk_full(temporary: str) -> None:
        Path(temporary).write_text("{half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(RunFolderError, match="No space left on device.*writable folder"):
        write_atomically(path, disk_full)
    assert json.loads(path.read_text()) == {"status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left behind


def test_an_output_folder_that_cannot_be_made_gets_a_message_not_a_traceback(tmp_path, data_root):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = train(data_root, blocker / "run")
    assert result.returncode != 0
    assert "cannot make the output folder" in said(result) and "Traceback" not in said(result)


def test_checkpoints_load_weights_only_so_no_code_runs_from_them(tmp_path):
    torch.save({"model": {}, "payload": DivergingLoss()}, tmp_path / "checkpoint.pt")  # an arbitrary object
    with pytest.raises(RunFolderError, match="cannot be read"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_written_before_the_format_was_versioned_still_loads(tmp_path):
    """Format 1: the unversioned checkpoint format's plain dict, its loss config naming the likelihood."""
    from vae_lab.training.checkpoint import FORMAT_VERSION

    old_loss = {"_target_": "vae_lab.losses.ELBO", "recon_weight": 1.0, "kl_weight": 1.0}
    state = {
        "model": {"w": torch.ones(2)},
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 3,
        "position": {
            "epoch": 4,
            "order_rng": torch.Generator().get_state(),
            "step": 5,
            "sums": [1.0, 2.0, 3.0],
        },
        "history": [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}],
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": [],
        "order_rng": torch.Generator().get_state(),
        "config": {"loss": old_loss | {"likelihood": "gaussian", "gaussian_variance": 0.05}, "seed": 0},
        "hydra_files": {"config.yaml": "seed: 0\n"},
    }
    torch.save(state, tmp_path / "checkpoint.pt")
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.format_version == FORMAT_VERSION and checkpoint.epoch == 3
    assert checkpoint.position.step == 5 and checkpoint.position.sums == [1.0, 2.0, 3.0]
    assert torch.equal(checkpoint.model["w"], torch.ones(2))
    likelihood = {"_target_": "vae_lab.losses.GaussianLikelihood", "variance": 0.05}
    assert checkpoint.config["loss"] == old_loss | {"likelihood": likelihood}  # today's spelling
    torch.save(state | {"format_version": FORMAT_VERSION + 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(RunFolderError, match="not a checkpoint this vae_lab can read"):
        load_checkpoint(tmp_path)


# a stop signal that arrives after training, while the run is being drawn (or evaluated)
SIGNAL_WHILE_DRAWING = """
import os, signal
import vae_lab.train as train
draw = train.draw_run_figures
def draw_then_signal(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return draw(*args, **kwargs)
train.draw_run_figures = draw_then_signal
train.main()
"""


def test_a_stop_signal_after_training_lets_the_run_finish_then_stops_the_sweep(tmp_path, data_root):
    sweep = tmp_path / "sweep"
    overrides = command(data_root, "model.latent_dim=2,3", "trainer.epochs=1", f"hydra.sweep.dir={sweep}")[3:]
    result = subprocess.run(
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


def test_resuming_with_other_speed_options_goes_on_and_says_it_will_not_be_bit_identical(tmp_path, data_root):
    """The speed options are no part of the resume key: a resume with other ones goes on, and says how
    its numbers then depart from an uninterrupted run's (fast dropout: another random stream)."""
    run_dir = tmp_path / "run"
    first = train(data_root, run_dir, "trainer.epochs=1")
    assert first.returncode == 0, said(first)
    assert load_checkpoint(run_dir).speed["fast_dropout"] is True  # speed=auto, recorded
    same = train(data_root, run_dir, "trainer.epochs=2", "trainer.resume=true")
    assert same.returncode == 0 and "other speed options" not in said(same)
    other = train(data_root, run_dir, "trainer.epochs=3", "trainer.resume=true", "speed.fast_dropout=false")
    assert other.returncode == 0, said(other)
    assert "speed.fast_dropout: True in the checkpoint, False now" in said(other)
    assert "another random stream" in said(other) and "not end bit-identical" in said(other)
    assert summary(run_dir)["epochs"] == 3 and epochs_logged(run_dir) == [1, 2, 3]


def test_a_checkpoint_whose_model_config_held_the_speed_options_resumes_into_today_s_layout(tmp_path):
    """Written while fused_blocks and the like sat in conf/model: they become the checkpoint's speed
    options, and its model config the plain model's, as `conf/model` now describes it."""
    from vae_lab.training.checkpoint import from_state

    model = {
        "_target_": "vae_lab.models.VAE",
        "latent_dim": 2,
        "encoder": {"batch_norm": True, "dropout": 0.3, "fast_dropout": True, "fused_blocks": False},
        "decoder": {"latent_dim": 2, "fast_transpose": True, "one_channel_kernel": True},
    }
    state = {
        "model": {},
        "optimizer": {},
        "epoch": 1,
        "history": [],
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": [],
        "order_rng": torch.Generator().get_state(),
        "config": {"model": model, "seed": 0},
        "hydra_files": {},
        "format_version": 2,
    }
    checkpoint = from_state(state, tmp_path / "checkpoint.pt")
    assert checkpoint.speed == {
        "fast_dropout": True,
        "fused_blocks": False,
        "fast_transpose": True,
        "one_channel_kernel": True,
    }
    assert checkpoint.config["model"]["encoder"] == {"batch_norm": True, "dropout": 0.3}
    assert checkpoint.config["model"]["decoder"] == {"latent_dim": 2}
