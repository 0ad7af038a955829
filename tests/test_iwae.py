"""loss=iwae (Burda et al. 2016): the importance-weighted bound as a loss of the registry, the staged
learning rate of their schedule, and experiment=burda2015's protocol."""

import json
import math

import pytest
import torch

from tests.conftest import compose_run, run_in_process, write_fake_mnist
from vae_lab.errors import ConfigError
from vae_lab.losses import ELBO, ImportanceWeighted, gaussian_log_density, loss_parts
from vae_lab.models import VAE, MLPDecoder, MLPEncoder
from vae_lab.training.loop import TrainStep
from vae_lab.training.schedule import LrStages


def small_vae(latent_dim: int = 3) -> VAE:
    torch.manual_seed(0)
    encoder = MLPEncoder(hidden=[32], activation="tanh")
    return VAE(latent_dim, encoder, MLPDecoder(latent_dim, hidden=[32], activation="tanh"))


def binary_images(count: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, 1, 28, 28, generator=generator) < 0.2).float()


def test_one_draw_is_the_elbos_one_draw_estimate_and_its_mean_is_the_closed_form_elbo():
    model, images = small_vae().eval(), binary_images(8)
    with torch.no_grad():
        output = model(images)
        parts = ImportanceWeighted(samples=1)(output, images, decode=model.decoder)
        prior = torch.zeros_like(output.code)
        one_draw = (
            ELBO()(output, images).recon
            + (
                gaussian_log_density(output.code, output.mean, output.log_var)
                - gaussian_log_density(output.code, prior, prior)
            ).mean()
        )
        assert parts.total.item() == pytest.approx(one_draw.item(), rel=1e-6)
        both = ImportanceWeighted(samples=1, bound="elbo")(output, images, decode=model.decoder)
        assert both.total.item() == parts.total.item()
        # over many draws of the same images, the mean of the one-draw estimate is the ELBO's closed form
        repeated = images.repeat(4000, 1, 1, 1)
        many = model(repeated)
        estimates = torch.stack(
            [
                ImportanceWeighted(samples=1)(many, repeated, decode=model.decoder).total,
                ELBO()(many, repeated).total,
            ]
        )
        per_image = -ImportanceWeighted(samples=1).log_weights(many, repeated, model.decoder)[0]
        standard_error = per_image.std().item() / math.sqrt(len(repeated))
        assert abs(estimates[0] - estimates[1]).item() < 4 * standard_error


def test_the_bound_rises_with_k_on_a_fixed_model_and_the_vae_bound_stays_the_elbo():
    model, images = small_vae().eval(), binary_images(400)
    with torch.no_grad():
        output = model(images)
        bounds = [
            -ImportanceWeighted(samples=k)(output, images, model.decoder).total.item() for k in (1, 5, 50)
        ]
        means = [
            -ImportanceWeighted(samples=k, bound="elbo")(output, images, model.decoder).total.item()
            for k in (1, 50)
        ]
        elbo = -ELBO()(output, images).total.item()
    assert bounds[0] < bounds[1] < bounds[2]
    assert bounds[2] - bounds[0] > 1.0  # nats: an untrained posterior leaves a wide gap to close
    assert means[1] == pytest.approx(elbo, abs=0.5)  # the mean of 50 log weights: the ELBO, less noisy


def test_the_step_decodes_the_further_draws_with_the_models_decoder_and_trains():
    model, images = small_vae(), binary_images(64)
    loss = ImportanceWeighted(samples=5)
    step = TrainStep(model, loss, torch.optim.Adam(model.parameters(), lr=1e-2))
    first = step(images).total.item()
    for _ in range(30):
        last = step(images).total.item()
    assert last < first - 5
    decoded = []
    loss_parts(loss, model(images), images, lambda codes: decoded.append(len(codes)) or model.decoder(codes))
    assert decoded == [4 * 64]  # k - 1 further draws of each image, in one decoding


def test_samples_and_bound_that_make_no_sense_are_refused_with_what_would_do():
    with pytest.raises(ConfigError, match=r"loss.samples=0 .* positive integer"):
        ImportanceWeighted(samples=0)
    with pytest.raises(ConfigError, match=r"loss.bound='mean' .* iwae, elbo"):
        ImportanceWeighted(bound="mean")
    with pytest.raises(ConfigError, match=r"loss.samples=0 is not allowed"):
        from vae_lab.config import check_config

        check_config(compose_run("loss=iwae", "loss.samples=0"))


def test_the_staged_rate_follows_burdas_schedule_from_the_epoch_alone():
    stages = LrStages.of(3, 10 ** (-1 / 7))
    epochs = (1, 2, 4, 5, 13, 14, 40, 41, 3280)
    assert [stages.stage_of(epoch) for epoch in epochs] == [0, 1, 1, 2, 2, 3, 3, 4, 7]
    assert stages.epochs_through(7) == 3280
    assert stages.rate(3280, 1e-3) == pytest.approx(1e-3 * 10 ** (-1), rel=1e-9)
    assert LrStages.of(None, 1.0) is None
    with pytest.raises(ConfigError, match=r"base=0"):
        LrStages.of(0, 0.5)


def test_a_tiny_burda_run_trains_at_the_staged_rates_and_resumes_at_them(tmp_path):
    root = write_fake_mnist(tmp_path / "data", train_count=40, test_count=10)

    def burda(run_dir, epochs, resume=False):
        overrides = [
            "experiment=burda2015",
            f"data.root={root}",
            "data.download=false",
            "model.latent_dim=4",
            "loss.samples=3",
            "trainer.lr_stages.base=2",
            "trainer.lr_stages.decay=0.5",
            f"trainer.epochs={epochs}",
            "trainer.progress=false",
            "trainer.figures=false",  # the figures have tests of their own
            "device=cpu",
            "evaluation.enabled=false",
        ] + ["trainer.resume=true"] * resume
        run_in_process(run_dir, *overrides, resume=resume)
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    history = burda(tmp_path / "straight", epochs=4)
    assert [record["lr"] for record in history] == pytest.approx([1e-3, 5e-4, 5e-4, 2.5e-4])
    for record in history:  # the test split's total is the bound the run optimises, below recon + KL
        assert record["test"]["total"] < record["test"]["recon"] + record["test"]["kl"]
    burda(tmp_path / "resumed", epochs=2)
    resumed = burda(tmp_path / "resumed", epochs=4, resume=True)
    assert [r["lr"] for r in resumed] == [r["lr"] for r in history]
    assert [r["test"] for r in resumed] == [r["test"] for r in history]


def test_the_experiment_config_is_the_papers_protocol():
    cfg = compose_run("experiment=burda2015")
    assert list(cfg.model.encoder.hidden) == [200, 200] and cfg.model.encoder.activation == "tanh"
    assert list(cfg.model.decoder.hidden) == [200, 200] and cfg.model.latent_dim == 50
    assert (cfg.loss.samples, cfg.loss.bound, cfg.data.binarize) == (50, "iwae", "dynamic")
    assert (cfg.trainer.batch_size, cfg.optimizer.lr, cfg.optimizer.eps) == (20, 1e-3, 1e-4)
    assert LrStages.of(cfg.trainer.lr_stages.base, cfg.trainer.lr_stages.decay).epochs_through(7) == 3280
    assert cfg.trainer.epochs == 3280 and cfg.evaluation.iwae_k == 5000


def test_the_table_puts_each_evaluated_run_beside_the_paper_and_names_the_runs_not_evaluated(
    tmp_path, monkeypatch
):
    import importlib

    from tests.conftest import REPO

    monkeypatch.syspath_prepend(str(REPO / "experiments"))
    burda = importlib.import_module("burda2015")
    for name, bound, k in (("vae_k1", "elbo", 1), ("iwae_k50", "iwae", 50)):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(f"loss:\n  bound: {bound}\n  samples: {k}\n")
    history = [{"test": {"total": 120.0}, "train_s": 10.4, "lr": 1e-3}]
    history.append({"test": {"total": 110.0}, "train_s": 10.4})
    (tmp_path / "vae_k1" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    metrics = {"iwae": {"k": 5000, "images": 2000, "nll_k5000": 104.321}, "latent": {"active_units": 17}}
    summary = {"status": "completed", "metrics": metrics, "device": "cpu"}
    (tmp_path / "vae_k1" / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "iwae_k50" / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    text = burda.write_table(tmp_path, tmp_path / "table").read_text()
    assert "| VAE | 1 | 2 | 104.32 (K = 5,000, 2,000) | 86.76 | 17 | 21 s |" in text
    assert "| iwae_k50 | | | not evaluated: see iwae_k50.log |" in text
    assert (tmp_path / "table" / "burda2015_passes.png").stat().st_size > 0
    assert json.loads((tmp_path / "table" / "burda2015.json").read_text())[0]["test_bound"] == [120.0, 110.0]
