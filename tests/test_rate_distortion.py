"""The rate-distortion study: each run's beta, its point of the plane, the table and figures compare writes,
refused betas, and experiments/rate_distortion.py on tiny data (3 betas and KL only)."""

import json
import math
from pathlib import Path

import pytest

from tests import warm_start
from tests.conftest import REPO, build_run, compose_run, python
from vae_lab.compare import RunRow
from vae_lab.errors import ConfigError
from vae_lab.figures import rate_distortion as figures
from vae_lab.rate_distortion import beta_of, points, table


def test_a_runs_beta_is_its_kl_weight_over_its_reconstruction_weight():
    assert beta_of({"loss.recon_weight": "1.0"}) == 0.0  # loss=recon
    assert beta_of({"loss.recon_weight": "1.0", "loss.kl_weight": "4.0"}) == 4.0
    assert beta_of({"loss.recon_weight": "2.0", "loss.kl_weight": "1.0"}) == 0.5
    assert beta_of({"loss.kl_weight": "1.0"}) == math.inf  # loss=kl
    assert beta_of({"loss.recon_weight": "0.0", "loss.kl_weight": "1.0"}) == math.inf
    assert beta_of({"loss.samples": "5"}) is None  # a loss without weights: no beta


def row(beta: str, latent: int, seed: int, rate: float, distortion: float, **metrics) -> RunRow:
    weights = {"inf": {"loss": "kl", "loss.kl_weight": "1"}, "0": {"loss": "recon", "loss.recon_weight": "1"}}
    settings = weights.get(beta, {"loss": "elbo", "loss.recon_weight": "1", "loss.kl_weight": beta})
    settings = settings | {"model.latent_dim": str(latent), "seed": str(seed)}
    numbers = {"test_kl": rate, "test_recon": distortion, "train_images": 60000}
    numbers |= {"metrics_likelihood_bce_floor": 45.5} | metrics
    return RunRow(Path(f"/runs/{beta}-{latent}-{seed}"), "run", settings, settings, "completed", "", numbers)


def sweep_rows() -> list[RunRow]:
    rows = []
    for latent, scale in ((2, 1.0), (16, 3.0)):
        for beta, rate, distortion in (
            ("0", 20.0, 120.0),
            ("1", 6.0, 150.0),
            ("10", 1.0, 190.0),
            ("inf", 0.0, 206.0),
        ):
            for seed, noise in ((0, -0.5), (1, 0.5)):
                coverage = {"metrics_prior_samples_coverage": 0.1 * (beta == "1") + 0.01}
                rows.append(
                    row(beta, latent, seed, scale * rate + noise, distortion / scale + noise, **coverage)
                )
    failed = row("4", 2, 0, 3.0, 170.0)
    failed.status = "failed"
    return [*rows, failed, row("4", 2, 0, 3.0, None)]  # neither counts: failed, no distortion


def test_points_group_seeds_by_beta_apart_for_each_other_naming_key():
    found = points(sweep_rows(), ["loss", "loss.kl_weight", "model.latent_dim", "seed"])
    assert [(p.group, p.beta) for p in found[4:]] == [  # 2 before 16: numbers in a group sort as numbers
        ("model.latent_dim=16", 0.0),
        ("model.latent_dim=16", 1.0),
        ("model.latent_dim=16", 10.0),
        ("model.latent_dim=16", math.inf),
    ]
    assert len(found) == 8 and all(len(p.rates) == 2 for p in found)
    first = found[0]  # latent 2, beta 0: (20 - 0.5, 20 + 0.5)
    assert (first.rates, first.distortions) == ([19.5, 20.5], [119.5, 120.5])
    assert first.article_loss == "reconstruction only" and found[-1].article_loss == "KL only"
    assert points(sweep_rows()[:2], ["loss", "model.latent_dim", "seed"]) == []  # one beta: no curve


def test_the_table_gives_mean_and_sd_over_seeds_and_the_floor():
    text = table(points(sweep_rows(), ["loss", "loss.kl_weight", "model.latent_dim", "seed"]))
    assert (
        "| model.latent_dim=2 | 0 (reconstruction only) | 2 | 20.00 ± 0.71 | 120.00 ± 0.71 | 140.00 ± 1.41"
        in text
    )
    assert "| model.latent_dim=2 | 1 (the ELBO) | 2 |" in text and "| KL only | 2 |" in text
    assert "floor (D cannot go below it): 45.50" in text
    assert "| 0.110 ± 0.000 |" in text  # coverage, the beta = 1 runs'


def test_the_figures_are_drawn_with_every_beta_named(tmp_path):
    found = points(sweep_rows(), ["loss", "loss.kl_weight", "model.latent_dim", "seed"])
    written = figures.draw(found, tmp_path)
    assert [path.name for path in written] == ["rate_distortion.png", "metrics_vs_beta.png"]
    assert all(path.stat().st_size > 10_000 for path in written)
    positions = figures.beta_positions([0.0, 0.03, 1.0, 30.0, math.inf])
    assert positions[math.inf] == 300.0 and positions[0.0] == 0.0


@pytest.mark.parametrize("beta", ["-1", "nan", "inf"])
def test_a_beta_that_makes_no_sense_is_refused_before_training_in_one_line(beta):
    with pytest.raises(
        ConfigError, match=rf"loss.kl_weight={beta if beta != '-1' else '-1.0'}.* non-negative, finite"
    ):
        compose_run(f"loss.kl_weight={beta}")


def test_a_kl_weight_for_a_model_without_a_posterior_is_refused_before_training():
    cfg = compose_run("model=ae", "loss=elbo", "loss.kl_weight=0.5")
    with pytest.raises(ConfigError, match=r"needs an encoder distribution.*deterministic autoencoder"):
        build_run(cfg)


def test_the_script_sweeps_three_betas_and_kl_only_and_draws_the_plane(tmp_path, fake_mnist_root):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep_dir = tmp_path / "rd"
    result = warm_start.run(
        [
            python(),
            str(REPO / "experiments" / "rate_distortion.py"),
            "--betas",
            "0",
            "1",
            "10",
            "--latent",
            "2",
            "--seeds",
            "0",
            f"data.root={fake_mnist_root}",
            "data.limit=128",
            "model=mlp_vae",
            "model.encoder.hidden=32",
            "model.decoder.hidden=32",
            "trainer.epochs=1",
            "trainer.batch_size=64",
            "trainer.progress=false",
            "trainer.figures=false",  # compare's figures are under test, not the runs' own
            "evaluation.enabled=false",
            "hydra/launcher=basic",  # one job after another; jobs at once: test_sweeps' ablation test
            f"hydra.sweep.dir={sweep_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(path.read_text()) for path in sorted(sweep_dir.rglob("summary.json"))]
    assert len(summaries) == 4 and all(summary["status"] == "completed" for summary in summaries)
    text = (sweep_dir / "rate_distortion.md").read_text()
    for beta in ("| 0 (reconstruction only) |", "| 1 (the ELBO) |", "| 10 |", "| KL only |"):
        assert beta in text
    assert (sweep_dir / "rate_distortion.png").is_file() and (sweep_dir / "metrics_vs_beta.png").is_file()
    assert not list(sweep_dir.glob("metrics_vs_loss.kl_weight.png"))  # the beta figure, not a generic one
