"""The training path on the device that VAE_LAB_TEST_DEVICE names (cpu unless set): `make gpu-check`
sets it to cuda, so that the same tests run on a GPU; in CI they run the same logic on the CPU."""

import json
import os

import pytest
import torch

from tests.conftest import FAST_EVALUATION, build_run, run_in_process
from tests.test_datasets import compose_run
from vae_lab.training.loop import TrainStep

DEVICE = os.environ.get("VAE_LAB_TEST_DEVICE", "cpu")

pytestmark = pytest.mark.skipif(
    DEVICE.startswith("cuda") and not torch.cuda.is_available(),
    reason=f"VAE_LAB_TEST_DEVICE={DEVICE}, but torch sees no CUDA device",
)

TINY = [
    "trainer.epochs=1",
    "trainer.batch_size=32",
    "trainer.progress=false",
    f"device={DEVICE}",
    *FAST_EVALUATION,
    "evaluation.prior_samples=200",
    "evaluation.iwae_images=20",
]


def test_a_run_trains_evaluates_and_resumes_on_the_device(fake_mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    summary = run_in_process(run_dir, *TINY, f"data.root={fake_mnist_root}", "evaluation.enabled=false")
    assert summary["status"] == "completed" and summary["device"].startswith(DEVICE.split(":")[0])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and all(torch.isfinite(torch.tensor(r["test"]["total"])) for r in records)
    longer = [*TINY, f"data.root={fake_mnist_root}", "trainer.epochs=2", "trainer.resume=true"]
    resumed = run_in_process(run_dir, *longer, resume=True)
    assert resumed["status"] == "completed" and resumed["epochs"] == 2 and resumed["resumed_after_epoch"] == 1
    assert resumed["metrics"]["prior_samples"]["coverage"] is not None  # the evaluation, on the device


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_train_step_on_the_device_gives_finite_losses_that_fall(precision):
    torch.manual_seed(0)
    cfg = compose_run(f"device={DEVICE}", "model.latent_dim=8", f"speed.precision={precision}")
    step = TrainStep.sped_up(*build_run(cfg, DEVICE), cfg.speed)
    step.train()
    images = (torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1)) > 0.7).float()
    losses = [step(images.to(DEVICE)).total.item() for _ in range(8)]
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0]


def test_prior_samples_of_a_seed_are_the_same_on_the_device_as_on_the_cpu():
    cfg = compose_run("model.latent_dim=8")
    torch.manual_seed(0)
    model, _, _ = build_run(cfg)
    model.eval()
    on_cpu = model.sample(16, torch.Generator().manual_seed(3))
    on_device = model.to(DEVICE).sample(16, torch.Generator().manual_seed(3)).cpu()
    assert torch.allclose(on_cpu, on_device, atol=1e-4)


def test_dropout_words_on_the_device_are_the_cpu_kernels_bits():
    """On a GPU fast dropout's words come from torch operations, on a CPU from the C kernel (where it
    builds): the same SplitMix64 words, so a seed gives the same masks on either."""
    from vae_lab.speed.layers import counter_words, dropout_words

    torch.manual_seed(7)
    on_device = dropout_words(4001, torch.device(DEVICE))
    assert on_device.device.type == DEVICE.split(":")[0]
    torch.manual_seed(7)
    assert torch.equal(on_device.cpu(), dropout_words(4001, torch.device("cpu")))
    assert torch.equal(
        counter_words(3, 10, torch.device(DEVICE)).cpu(), counter_words(3, 10, torch.device("cpu"))
    )
