"""The CUDA-only branches, run on a CPU: device names, CUDA random states in checkpoints, prior draws."""

import pytest
import torch

from vae_lab.devices import resolve_device
from vae_lab.errors import ConfigError
from vae_lab.models import VAE, MLPDecoder, MLPEncoder
from vae_lab.training.checkpoint import Checkpoint, cuda_rng_states


def test_cuda_n_names_a_device_where_torch_sees_cuda_and_is_refused_where_it_does_not(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="device='cuda:1' was asked for, but torch sees no CUDA device"):
        resolve_device("cuda:1")
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(ConfigError, match="is not a device"):
        resolve_device("cuda:x")


def _checkpoint(cuda_rng: list) -> tuple[Checkpoint, torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    state = Checkpoint(
        model=model.state_dict(),
        optimizer=optimizer.state_dict(),
        epoch=1,
        history=[],
        torch_rng=torch.get_rng_state(),
        cuda_rng=cuda_rng,
        order_rng=torch.Generator().manual_seed(5).get_state(),
        config={},
        hydra_files={},
    )
    return state, model, optimizer


def test_cuda_random_states_are_saved_and_put_back_where_cuda_is_there(monkeypatch):
    states = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5], dtype=torch.uint8)]
    put_back = []
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.get_rng_state_all", lambda: states)
    monkeypatch.setattr("torch.cuda.set_rng_state_all", put_back.append)
    assert cuda_rng_states() == states  # what a checkpoint saves on a GPU machine
    checkpoint, model, optimizer = _checkpoint(states)
    generator = torch.Generator()
    checkpoint.restore(model, optimizer, generator)
    assert put_back == [states]
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(5).get_state())


def test_a_gpu_checkpoint_resumed_on_a_cpu_machine_skips_the_cuda_states(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("torch.cuda.set_rng_state_all", lambda states: pytest.fail("no CUDA to restore"))
    assert cuda_rng_states() == []
    checkpoint, model, optimizer = _checkpoint([torch.tensor([1], dtype=torch.uint8)])
    checkpoint.restore(model, optimizer, torch.Generator())  # no error: the CUDA states are left


def test_prior_draws_come_from_a_cpu_generator_so_a_seed_gives_the_same_codes_on_any_device(monkeypatch):
    model = VAE(2, MLPEncoder((1, 4, 4), hidden=8), MLPDecoder(2, (1, 4, 4), hidden=8))
    seen = []
    original = model.decode
    monkeypatch.setattr(model, "decode", lambda codes: seen.append(codes) or original(codes))
    model.sample(5, torch.Generator().manual_seed(3))
    assert torch.equal(seen[0], torch.randn(5, 2, generator=torch.Generator().manual_seed(3)))


def test_the_jobs_of_a_sweep_take_the_gpus_round_robin_where_there_are_several(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    assert [resolve_device("auto", job).index for job in range(6)] == [0, 1, 2, 3, 0, 1]
    assert resolve_device("cuda", 5) == torch.device("cuda", 1)
    assert resolve_device("cuda:3", 0) == torch.device("cuda", 3)  # a named GPU stays that GPU
    assert resolve_device("auto") == torch.device("cuda")  # a single run: the default GPU
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    assert resolve_device("auto", 3) == torch.device("cuda")
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_device("auto", 3) == torch.device("cpu")


@pytest.fixture
def launch(monkeypatch):
    """experiments/_launch.py, imported anew (the study scripts' helpers)."""
    import importlib
    import sys

    from tests.conftest import REPO

    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    monkeypatch.syspath_prepend(str(REPO / "experiments"))
    sys.modules.pop("_launch", None)
    return importlib.import_module("_launch")


@pytest.mark.parametrize(("gpus", "expected"), [(0, 3), (1, None), (2, 2), (8, 3)])
def test_a_study_runs_as_many_jobs_at_once_as_there_are_gpus_or_all_of_them_on_a_cpu(
    monkeypatch, launch, gpus, expected
):
    monkeypatch.setattr("torch.cuda.is_available", lambda: gpus > 0)
    monkeypatch.setattr("torch.cuda.device_count", lambda: gpus)
    overrides = launch.all_jobs_at_once(3, ["seed=0,1,2"])
    if expected is None:
        assert overrides == []  # one GPU: one job after another
    else:
        assert overrides == [
            "hydra/launcher=joblib",
            f"hydra.launcher.n_jobs={expected}",
            "trainer.progress=false",
        ]


@pytest.mark.parametrize("launcher", ["hydra/launcher=basic", "hydra/launcher=slurm"])
def test_a_launcher_on_the_command_line_is_the_one_a_study_runs_with(monkeypatch, launch, launcher):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert launch.all_jobs_at_once(3, ["seed=0,1", launcher]) == []  # nothing for Hydra to refuse
    assert launch.all_jobs_at_once(3, ["seed=0,1"])[0] == "hydra/launcher=joblib"
