"""End to end: the CLI trains on a tiny MNIST in IDX format and writes every file a run promises."""

import json
import subprocess
from pathlib import Path

import matplotlib.image
import pytest
import torch

from tests import warm_start
from tests.conftest import FAST_EVALUATION, python
from vae_lab import load_run
from vae_lab.data import load_mnist
from vae_lab.errors import RunFolderError
from vae_lab.evaluation.inference import evaluate_loss
from vae_lab.losses import ELBO, Reconstruction

FIGURES = ("reconstructions.png", "latent_scatter.png", "samples.png", "manifold.png")


def train_cli(run_dir: Path, data_root: Path, *overrides: str) -> subprocess.CompletedProcess:
    result = warm_start.run(
        [
            python(),
            "-m",
            "vae_lab.train",
            f"data.root={data_root}",
            f"hydra.run.dir={run_dir}",
            "trainer.epochs=2",
            "trainer.batch_size=32",
            "trainer.eval_batch_size=50",
            *FAST_EVALUATION,
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    from tests.conftest import write_fake_mnist

    root = write_fake_mnist(tmp_path_factory.mktemp("data"))
    run_dir = tmp_path_factory.mktemp("runs") / "vae"
    result = train_cli(run_dir, root, "seed=3")
    return run_dir, root, result


def test_a_run_writes_every_promised_file(vae_run):
    run_dir, _, result = vae_run
    for name in (
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        "metrics.jsonl",
        "summary.json",
        "checkpoint.pt",
        *FIGURES,
    ):
        assert (run_dir / name).is_file(), name
    assert f"Run folder: {run_dir}" in result.stderr + result.stdout


def test_metrics_have_one_line_per_epoch_in_nats_per_image(vae_run):
    run_dir, _, _ = vae_run
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    for line in lines:
        for split in ("train", "test"):
            parts = line[split]
            assert parts["total"] == pytest.approx(parts["recon"] + parts["kl"], rel=1e-5)
            assert 0 < parts["kl"] < parts["recon"] < 784 * 0.7  # BCE per image is below 784 log 2
        assert line["train_s"] > 0 and line["train_images_per_s"] > 0


def test_summary_holds_the_final_test_numbers(vae_run):
    run_dir, _, _ = vae_run
    summary = json.loads((run_dir / "summary.json").read_text())
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert summary["test"] == last["test"] and summary["train"] == last["train"]
    assert summary["train_images"] == 256 and summary["test_images"] == 64
    assert summary["wall_time_s"] > 0
    assert 100 < summary["peak_memory_mib"] < 4096  # torch alone takes a few hundred MiB
    assert summary["resumed_after_epoch"] is None
    assert sorted(summary["figures"]) == sorted([*FIGURES, "class_histogram.png", "interpolation.png"])


def test_figures_are_real_images(vae_run):
    run_dir, _, _ = vae_run
    for name in FIGURES:
        image = matplotlib.image.imread(run_dir / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0.01, name  # not blank


def test_checkpoint_holds_model_optimiser_epoch_and_rng(vae_run):
    run_dir, _, _ = vae_run
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2
    assert {"model", "optimizer", "torch_rng", "order_rng"} <= set(state)


def test_load_run_gives_back_the_trained_model(vae_run):
    run_dir, root, _ = vae_run
    run = load_run(run_dir)
    assert run.config.seed == 3 and run.summary["status"] == "completed" and len(run.metrics) == 2
    model = run.model
    assert not model.training
    data = load_mnist(str(root), download=False)
    # the same numbers as the run measured: evaluation noise comes from the run's seed
    again = evaluate_loss(model, ELBO(), data.test_images, batch_size=50, seed=3)
    for key in ("total", "recon", "kl"):
        assert again[key] == pytest.approx(run.summary["test"][key], rel=1e-5)
    mean, log_var = model.encode(torch.rand(4, 1, 28, 28))
    assert mean.shape == log_var.shape == (4, 2)
    probabilities = model.decode(mean)
    assert probabilities.shape == (4, 1, 28, 28) and 0 <= probabilities.min() and probabilities.max() <= 1
    assert model.sample(3).shape == (3, 1, 28, 28)


def test_training_lowers_the_loss(vae_run):
    run_dir, _, _ = vae_run
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train"]["total"] < lines[0]["train"]["total"]


def test_a_deterministic_autoencoder_logs_kl_as_not_applicable(tmp_path, fake_mnist_root):
    run_dir = tmp_path / "ae"
    train_cli(
        run_dir, fake_mnist_root, "model=mlp_ae", "loss=recon", "model.latent_dim=3", "trainer.epochs=1"
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"]["kl"] is None and summary["train"]["kl"] is None
    assert summary["test"]["total"] == pytest.approx(summary["test"]["recon"])
    assert "manifold.png" not in summary["figures"]  # a 3-d latent has no 2-d manifold
    run = load_run(run_dir)
    assert run.model.encode(torch.rand(2, 1, 28, 28)).shape == (2, 3)
    data = load_mnist(str(fake_mnist_root), download=False)
    again = evaluate_loss(run.model, Reconstruction(), data.test_images, batch_size=64)
    assert again["total"] == pytest.approx(summary["test"]["total"], rel=1e-5)


def test_load_run_on_a_folder_that_is_not_a_run_says_so(tmp_path):
    with pytest.raises(RunFolderError, match="not a finished vae_lab run"):
        load_run(tmp_path)


@pytest.mark.parametrize(
    "option",
    [
        "speed.channels_last=false",
        "speed.fast_dropout=false",
        "speed.fused_blocks=false",
        "speed.fast_transpose=false",
        "speed.one_channel_kernel=false",
        "optimizer.fused=true",
        "speed.compile=true",
        "speed.precision=bf16",
    ],
)
def test_each_speed_option_gives_the_results_of_the_default_path(option, fake_mnist_root):
    """Same seed, same data: the same losses, up to float rounding where the arithmetic order changes.
    Dropout masks depend on the memory layout and on how they are drawn, so the options other than
    fast dropout are compared without dropout, and fast dropout only statistically (the fused blocks
    draw fast dropout's masks in the same order: compared with dropout, within 1%); torch.compile
    is compared with inductor's fallback_random, which draws the reparameterisation noise as eager does."""
    from hydra import compose, initialize_config_dir

    from tests.conftest import build_run
    from vae_lab.config import register_schemas
    from vae_lab.train import CONF_DIR
    from vae_lab.training.loop import TrainStep, train_epoch

    def losses(*overrides):
        register_schemas()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"data.root={fake_mnist_root}", *overrides])
        torch.manual_seed(0)
        step = TrainStep.sped_up(*build_run(cfg), cfg.speed)
        data = load_mnist(str(fake_mnist_root), download=False)
        generator = torch.Generator().manual_seed(0)
        return [train_epoch(step, data, 32, generator)["total"] for _ in range(2)]

    # compiled graphs draw random numbers from inductor's own generator unless told to use eager's
    import torch._inductor.config

    with torch._inductor.config.patch(fallback_random=True):
        if "fast_dropout" in option:
            assert losses(option) == pytest.approx(losses(), rel=0.05)
            return
        if "fused_blocks" in option:
            # the same masks, BatchNorm's statistics summed otherwise: two epochs of Adam carry that
            # rounding 0.03 to 0.14% apart here (tests/test_fused_block.py holds one step to 1e-4)
            assert losses(option) == pytest.approx(losses(), rel=0.01)
            return
        no_dropout = "model.encoder.dropout=0.0"
        first, second = losses(no_dropout, option)
        expected_first, expected_second = losses(no_dropout)
        if "bf16" in option:  # 8 bits of mantissa
            assert [first, second] == pytest.approx([expected_first, expected_second], rel=0.02)
            return
        # float rounding alone, the default path on one thread against two, leaves the first epoch's mean
        # 0.006% and the second's 0.17% apart: Adam's steps carry a rounding further with each step
        assert first == pytest.approx(expected_first, rel=5e-4)
        assert second == pytest.approx(expected_second, rel=5e-3)


def test_a_run_encodes_its_test_split_once_for_the_metrics_the_figures_and_the_trackers(
    tmp_path, fake_mnist_root, monkeypatch
):
    pytest.importorskip("tensorboard")
    from tests.conftest import run_in_process
    from vae_lab.evaluation import inference

    test_count = len(load_mnist(str(fake_mnist_root), download=False).test_images)
    encoded = []

    def counting(encode):
        def counted(model, images, *args, **kwargs):
            encoded.append(len(images))
            return encode(model, images, *args, **kwargs)

        return counted

    for name in ("encode_means", "encode_posteriors"):
        monkeypatch.setattr(inference, name, counting(getattr(inference, name)))
    run_dir = tmp_path / "run"
    overrides = ["trainer.epochs=1", "trainer.progress=false", "model.latent_dim=3", "logger=tensorboard"]
    fewer = ["evaluation.prior_samples=50", "evaluation.iwae_images=8", "trainer.batch_size=64"]
    summary = run_in_process(run_dir, f"data.root={fake_mnist_root}", *overrides, *FAST_EVALUATION, *fewer)
    assert {"latent_scatter.png", "traversal.png"} <= set(summary["figures"])
    assert summary["metrics"]["separability"]["knn_accuracy"] is not None
    assert list((run_dir / "tensorboard").rglob("tensors.tsv"))  # the projector's test codes
    assert encoded.count(test_count) == 1  # the suite's: the figures and the projector reuse its codes


def test_logger_tensorboard_writes_events_beside_the_run_files(tmp_path, fake_mnist_root):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    train_cli(run_dir, fake_mnist_root, "logger=tensorboard", "trainer.epochs=1", "evaluation.enabled=false")
    assert (run_dir / "metrics.jsonl").is_file() and (run_dir / "samples.png").is_file()
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert "test/total" in events.Tags()["scalars"] and "samples" in events.Tags()["images"]


@pytest.mark.parametrize("progress", [False, True])
def test_an_epoch_off_a_terminal_logs_a_line_at_each_quarter(progress, fake_mnist_root, caplog, capsys):
    """progress=false, or output that is not a terminal (as under pytest): no bar, a line per quarter."""
    import logging
    import re

    from tests.conftest import build_run
    from vae_lab.speed.measure import compose_config
    from vae_lab.training.loop import TrainStep, train_epoch

    cfg = compose_config([f"data.root={fake_mnist_root}"])
    step = TrainStep.sped_up(*build_run(cfg), cfg.speed)
    data = load_mnist(str(fake_mnist_root), download=False)  # 256 images: 8 batches of 32
    with caplog.at_level(logging.INFO, logger="vae_lab"):
        train_epoch(step, data, 32, torch.Generator().manual_seed(0), progress=progress, desc="epoch 2/3")
    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("epoch 2/3")]
    assert [re.sub(r", \d+ s$", "", line) for line in lines] == [
        "epoch 2/3: step 2/8",
        "epoch 2/3: step 4/8",
        "epoch 2/3: step 6/8",
    ], lines
    assert "epoch 2/3" not in capsys.readouterr().err  # no bar drawn into a file


def test_the_readme_s_notebook_snippet_runs_as_written():
    """The README's snippet, word for word: a shipped model, no data and no training."""
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    snippet = readme.split("<!-- notebook-snippet -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(snippet, namespace)
    assert namespace["images"].shape == (16, 1, 28, 28)
    assert 0 <= namespace["images"].min() and namespace["images"].max() <= 1
    assert namespace["run"].summary["test"]["total"] > 0
