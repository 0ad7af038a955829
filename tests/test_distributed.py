"""One run over several processes (torch.distributed, gloo on the CPU): the same run as one process.

The runs start two processes with the environment torchrun gives its workers (torchrun itself, its agent
and its signals are under test in test_distributed_faults.py), or two tasks of a submitit_local job, on a
tiny IDX MNIST, one thread each, evaluation off, and compare their checkpoints with one process's on the
same global batch (docs/scaling.md says what is equal and what is not).
"""

import json
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tests import warm_start
from tests.conftest import REPO, python, write_fake_mnist
from vae_lab.errors import ConfigError
from vae_lab.training.distributed import Ranks, SyncBatchNorm2dCPU, check_data_parallel_run, check_last_batch

RUN = [
    "device=cpu",
    "trainer.epochs=1",
    "trainer.threads=1",
    "trainer.progress=false",
    "trainer.figures=false",  # the figures have tests of their own
    "evaluation.enabled=false",
]


def train(data_root: Path, *overrides: str, processes: int = 1, cwd: Path = REPO):
    launch = warm_start.run_as_torchrun if processes == 2 else warm_start.run
    result = launch(
        [python(), "-m", "vae_lab.train", f"data.root={data_root}", *RUN, *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]


def largest_relative_difference(ours: dict, theirs: dict, keys) -> float:
    """max over the tensors named by keys of max|a - b| / max|b|"""
    return max(
        (
            (ours[key].double() - theirs[key].double()).abs().max()
            / theirs[key].double().abs().max().clamp_min(1e-12)
        ).item()
        for key in keys
    )


def largest_difference_beside_largest_weight(ours: dict, theirs: dict) -> float:
    """max|a - b| over every parameter, over the largest |b| of the model: float rounding, which Adam's
    first steps (updates of about lr x sign(gradient)) turn into differences of about 1e-5 of it; one
    step that differs moves weights by about lr (1e-3)."""
    difference = max((ours[key] - theirs[key]).abs().max().item() for key in theirs)
    return difference / max(value.abs().max().item() for value in theirs.values())


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_fake_mnist(tmp_path_factory.mktemp("data"), train_count=1024, test_count=128)


@pytest.fixture(scope="module")
def one_process_mlp(tmp_path_factory, data_root) -> Path:
    """The MLP VAE trained by one process: what the runs over two processes are compared with."""
    run_dir = tmp_path_factory.mktemp("one_process") / "run"
    train(data_root, "model=mlp_vae", "trainer.batch_size=64", f"hydra.run.dir={run_dir}")
    return run_dir


def test_each_process_takes_every_nth_row_and_together_they_take_the_global_batch():
    batch = torch.arange(10)
    shards = [Ranks(rank=r, world_size=3).shard(batch) for r in range(3)]
    assert [s.tolist() for s in shards] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert [Ranks(rank=r, world_size=3).shard_size(10) for r in range(3)] == [4, 3, 3]
    assert Ranks().shard(batch) is batch


def test_a_run_that_cannot_be_split_over_the_processes_is_refused_in_one_line(monkeypatch):
    two = Ranks(rank=0, world_size=2, local_world_size=2)
    cpu, gpu = torch.device("cpu"), torch.device("cuda:0")
    with pytest.raises(ConfigError, match="trainer.batch_size=65 cannot be split evenly over 2 processes"):
        check_data_parallel_run(two, 65, "auto", cpu)
    with pytest.raises(ConfigError, match="device=cuda:0 in a run of 2 processes"):
        check_data_parallel_run(two, 64, "cuda:0", gpu)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="2 processes on this machine, and torch sees 1 GPU"):
        check_data_parallel_run(two, 64, "auto", gpu)
    check_data_parallel_run(two, 64, "auto", cpu)  # gloo: any number of processes
    check_data_parallel_run(Ranks(), 65, "cuda:0", gpu)  # one process: nothing to split
    with pytest.raises(ConfigError, match="holds 1 images, fewer than the 2 processes"):
        check_last_batch(two, 64, 1025)
    check_last_batch(two, 64, 1026)


def test_the_cpu_synchronised_batchnorm_computes_what_batchnorm_computes():
    """In a process group (of one, here) it takes the sync path: sums through all_reduce, with their
    gradients; outputs, input gradients and running statistics are BatchNorm2d's."""
    store = tempfile.NamedTemporaryFile(delete=False)
    dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = nn.BatchNorm2d(6)
        with torch.no_grad():
            plain.weight.uniform_(0.5, 1.5)
            plain.bias.uniform_(-1, 1)
        reference = nn.BatchNorm2d(6)
        reference.load_state_dict(plain.state_dict())
        synced = SyncBatchNorm2dCPU.adopt(plain)
        x = torch.relu(torch.randn(16, 6, 7, 7) * 2 + 0.5)
        upstream = torch.randn(16, 6, 7, 7)
        for _ in range(3):
            ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
            out_ours, out_theirs = synced(ours), reference(theirs)
            out_ours.backward(upstream)
            out_theirs.backward(upstream)
            torch.testing.assert_close(out_ours, out_theirs, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(synced.running_mean, reference.running_mean)
        torch.testing.assert_close(synced.running_var, reference.running_var)
        assert synced.weight is plain.weight  # the same parameters: an optimiser built before holds them
        assert list(synced.state_dict()) == list(reference.state_dict())
    finally:
        dist.destroy_process_group()


def test_two_processes_train_the_mlp_vae_to_the_parameters_of_one_process(
    tmp_path, data_root, one_process_mlp
):
    """No BatchNorm, no dropout: the same batches and the same noise, so the same run to float rounding.
    With no hydra.run.dir, both processes train into one run folder."""
    one = one_process_mlp
    train(data_root, "model=mlp_vae", "trainer.batch_size=64", processes=2, cwd=tmp_path)
    folders = [p.parent for p in (tmp_path / "outputs").rglob("summary.json")]
    assert len(folders) == 1, folders
    two = folders[0]
    assert summary(two)["world_size"] == 2 and summary(two)["batch_per_process"] == 32
    assert summary(one)["world_size"] == 1
    assert not (two / ".hydra" / "overrides.yaml").read_text().count("hydra.run.dir")
    ours, theirs = weights(two), weights(one)
    assert largest_difference_beside_largest_weight(ours, theirs) < 1e-4
    for part in ("total", "recon", "kl"):
        assert summary(two)["test"][part] == pytest.approx(summary(one)["test"][part], rel=1e-4)


def test_two_processes_with_synchronised_batchnorm_train_the_conv_vae_as_one_process(tmp_path, data_root):
    """The conv VAE without dropout (each process draws its own dropout masks): BatchNorm normalises by
    the global batch's statistics in both. Plain SGD, so that a parameter's difference is its gradients'
    (Adam's first updates, lr x sign(gradient), turn float rounding into whole steps). Measured on this
    test's data: 3e-8 of the largest weight and 2e-7 of each running statistic; with
    trainer.sync_batchnorm=false, 2e-6 and 1e-2."""
    common = [
        "model=vae",
        "model.encoder.dropout=0",
        "speed=off",
        "data.limit=256",
        "trainer.batch_size=64",
        "optimizer._target_=torch.optim.SGD",
        "optimizer.lr=1e-5",
    ]
    train(data_root, *common, f"hydra.run.dir={tmp_path / 'one'}")
    train(data_root, *common, f"hydra.run.dir={tmp_path / 'two'}", processes=2)
    ours, theirs = weights(tmp_path / "two"), weights(tmp_path / "one")
    parameters = {key: theirs[key] for key in theirs if "running" not in key and "num_batches" not in key}
    statistics = [key for key in theirs if "running" in key]
    assert largest_difference_beside_largest_weight(ours, parameters) < 1e-6
    assert largest_relative_difference(ours, theirs, statistics) < 1e-5
    assert all(ours[key] == theirs[key] for key in theirs if "num_batches" in key)


def test_a_submitit_job_of_two_tasks_trains_one_run_over_both(tmp_path, data_root, one_process_mlp):
    """hydra/launcher=submitit_local with two tasks per node: what slurm_ddp does on a cluster."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    result = warm_start.run(
        [
            python(),
            "-m",
            "vae_lab.train",
            "-m",
            "hydra/launcher=submitit_local",
            "hydra.launcher.tasks_per_node=2",
            f"hydra.sweep.dir={sweep}",
            f"data.root={data_root}",
            "model=mlp_vae",
            "trainer.batch_size=64",
            *RUN,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    jobs = [p.parent for p in sweep.rglob("summary.json")]
    assert len(jobs) == 1
    assert summary(jobs[0])["world_size"] == 2
    assert largest_difference_beside_largest_weight(weights(jobs[0]), weights(one_process_mlp)) < 1e-4
