"""Faults and bad input: kills, stop signals, divergence, damaged files, full disks (restarted and
preempted sweeps: test_reliability_sweeps.py).

The runs here are the conv VAE (with dropout and batch norm, so every random state matters) on a
tiny IDX MNIST, one thread, evaluation and figures off: a few seconds each.
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

from tests import warm_start
from tests.conftest import REPO, made_once, python, wait_until, write_fake_mnist
from vae_lab.errors import RunFolderError
from vae_lab.files import write_atomically, write_json
from vae_lab.losses import ELBO
from vae_lab.training.checkpoint import load as load_checkpoint

RUN = [
    "trainer.epochs=3",
    "trainer.batch_size=64",
    "trainer.threads=1",
    "trainer.progress=false",
    "trainer.figures=false",  # the figures have tests of their own
    "evaluation.enabled=false",
]


def command(data_root: Path, *overrides: str, multirun: bool = False) -> list[str]:
    sweep = ["-m"] if multirun else []
    return [python(), "-m", "vae_lab.train", *sweep, f"data.root={data_root}", *RUN, *overrides]


def train(data_root: Path, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return warm_start.run(
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


def wait_for_epochs(run_dir: Path, count: int, process: warm_start.Popen) -> None:
    wait_until(lambda: len(epochs_logged(run_dir)) >= count, process, f"{count} epochs were logged")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """768 training images: 12 steps an epoch in batches of 64 (one folder for the session)."""
    return made_once(tmp_path_factory, "reliability_data", lambda root: write_fake_mnist(root, 768, 128))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root) -> Path:
    """The run the stopped and resumed runs must end bit-identical to: trained once in the session, for
    this module and test_reliability_sweeps.py."""

    def make(run_dir: Path) -> None:
        result = train(data_root, run_dir)
        assert result.returncode == 0, result.stderr[-3000:]

    return made_once(tmp_path_factory, "reliability_uninterrupted", make)


def start(data_root: Path, run_dir: Path) -> warm_start.Popen:
    """Start a run in the background; its error output stays readable through communicate()."""
    return warm_start.Popen(
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
    assert position is not None and position.epoch == 2 and 0 < position.step < 12  # 12 steps an epoch

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
    """The ELBO, until the 18th training step (the second epoch here), then NaN."""

    steps = 0

    def __call__(self, output, images):
        parts = super().__call__(output, images)
        if torch.is_grad_enabled():
            DivergingLoss.steps += 1
            if DivergingLoss.steps >= 18:
                parts.total = parts.total * float("nan")
        return parts


def test_a_diverging_run_stops_at_once_and_keeps_its_last_good_checkpoint(tmp_path, data_root):
    run_dir = tmp_path / "diverged"
    result = train(data_root, run_dir, "loss._target_=tests.test_reliability.DivergingLoss")
    assert result.returncode == 1
    assert "became nan at epoch 2, step 6 of 12" in said(result) and "Traceback" not in said(result)
    record = summary(run_dir)
    assert record["status"] == "diverged" and "epoch 2, step 6" in record["error"]
    assert load_checkpoint(run_dir).epoch == 1 and epochs_logged(run_dir) == [1]


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
