"""Every run's metrics in summary.json, and `python -m vae_lab.evaluate` on an existing folder."""

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
import torch

from tests import warm_start
from tests.conftest import FAST_EVALUATION, python, write_fake_mnist
from vae_lab.compare import summary_numbers
from vae_lab.evaluate import main as evaluate_main

BASE = ["trainer.epochs=2", "trainer.batch_size=32", "trainer.progress=false", *FAST_EVALUATION]


def train(run_dir: Path, root: Path, *overrides: str) -> dict:
    result = warm_start.run(
        [python(), "-m", "vae_lab.train", f"data.root={root}", f"hydra.run.dir={run_dir}", *BASE, *overrides],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_fake_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def vae_summary(tmp_path_factory, data_root):
    run_dir = tmp_path_factory.mktemp("runs") / "vae"
    return run_dir, train(run_dir, data_root, "model=mlp_vae")


def test_a_vae_run_logs_every_metric(vae_summary):
    run_dir, summary = vae_summary
    metrics = summary["metrics"]
    assert set(metrics) >= {"likelihood", "iwae", "latent", "separability", "prior_samples", "classifier"}
    assert metrics["likelihood"]["negative_elbo"] == pytest.approx(summary["test"]["total"], rel=1e-6)
    assert 0 < metrics["likelihood"]["bce_floor"] < metrics["likelihood"]["recon"]
    assert metrics["iwae"]["nll_k10"] <= metrics["iwae"]["nll_k1"]
    assert 40 <= metrics["iwae"]["images"] <= 50  # 5 per class; the tiny test split lacks a few
    assert len(metrics["latent"]["kl_per_dim"]) == 2 and 0 <= metrics["latent"]["active_units"] <= 2
    assert 0 <= metrics["separability"]["knn_accuracy"] <= 1
    exact = metrics["exact_likelihood"]["prior"]  # a 2-d latent: log p(x) by quadrature on the IWAE's images
    assert exact["images"] == metrics["iwae"]["images"] and isinstance(exact["resolved"], bool)
    assert exact["iwae_gap_k1"] == pytest.approx(metrics["iwae"]["nll_k1"] - exact["nll"])
    assert exact["nll"] < metrics["iwae"]["nll_k1"]  # the ELBO is a bound on it
    assert 0 < metrics["evaluation_s"] < summary["wall_time_s"]
    latent = metrics["latent"]
    mi_images = metrics["iwae"]["images"]  # the same stratified 5 per class (mi_images=50, iwae_images=50)
    assert (
        latent["mutual_information"] <= latent["mutual_information_max"] == pytest.approx(math.log(mi_images))
    )
    holes = metrics["latent_holes"]["prior"]
    assert 0 <= holes["hole_mass"] <= 1 and holes["prior_draws"] == 500 and holes["hole_mass_se"] > 0
    prior = metrics["prior_samples"]
    assert 0 <= prior["precision"] <= 1 and prior["frechet_distance"] > 0
    assert prior["coverage_lowest_class"] <= prior["coverage"] <= prior["coverage_highest_class"]
    assert len(prior["coverage_per_class"]) == 10 and prior["density"] >= 0
    real = metrics["classifier"]["real_data"]
    assert 0.5 < real["coverage"] <= 1 and real["density"] > 0 and 0 < real["precision"] <= 1
    assert real["frechet_distance"] == metrics["classifier"]["frechet_floor_train_vs_test"]
    for name in ("class_histogram.png", "interpolation.png"):
        assert name in summary["figures"] and (run_dir / name).is_file()


def test_an_autoencoder_gets_fitted_gaussian_samples_and_traversals(tmp_path, data_root):
    summary = train(tmp_path / "ae", data_root, "model=mlp_ae", "loss=recon", "model.latent_dim=3")
    metrics = summary["metrics"]
    assert "iwae" not in metrics and metrics["likelihood"]["negative_elbo"] is None
    assert metrics["exact_likelihood"] is None  # a 3-d latent: the quadrature is skipped, with a log line
    holes = metrics["latent_holes"]
    assert set(holes) == {"prior", "fitted_gaussian"} and "bandwidth" in holes["prior"]
    assert 0 <= metrics["fitted_gaussian_samples"]["coverage"] <= 1
    assert set(metrics["fitted_gaussian_samples"]) == set(metrics["prior_samples"])
    assert "traversal.png" in summary["figures"] and (tmp_path / "ae" / "traversal.png").is_file()


def test_a_vae_collapsed_onto_the_prior_decoding_grey_is_judged_as_kl_only_training_leaves_it(data_root):
    """The KL-only run: every posterior is the prior and the decoder's output is one grey image. The
    samples' precision must be below real images', the hole mass 0.05 and the KL of the aggregate
    posterior and the mutual information 0."""
    from hydra import compose, initialize_config_dir

    from vae_lab.config import CONF_DIR, register_schemas
    from vae_lab.data import load_mnist
    from vae_lab.evaluate import evaluate_model
    from vae_lab.models import VAE, MLPDecoder, MLPEncoder

    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*FAST_EVALUATION, "evaluation.hole_draws=4000"])
    model = VAE(2, MLPEncoder((1, 28, 28), hidden=16), MLPDecoder(2, (1, 28, 28), hidden=16))
    with torch.no_grad():
        for layer in (model.to_mean, model.to_log_var, model.decoder.body[-1]):
            layer.weight.zero_()
            layer.bias.zero_()  # posterior N(0, I) for every image; logits 0: every pixel 0.5
    data = load_mnist(str(data_root), download=False)
    metrics = evaluate_model(model, data, cfg.evaluation, 0, str(data_root), progress=False).metrics
    assert metrics["prior_samples"]["precision"] < metrics["classifier"]["real_data"]["precision"]
    assert metrics["prior_samples"]["coverage"] < 0.05  # one image repeated covers almost nothing
    holes = metrics["latent_holes"]["prior"]
    assert holes["hole_mass"] == pytest.approx(0.05, abs=4 * holes["hole_mass_se"] + 0.005)
    assert abs(holes["kl_q_p"]) < 1e-9 and holes["kl_reliable"]
    assert abs(metrics["latent"]["mutual_information"]) < 1e-6


def _digests(run_dir: Path) -> dict[str, str]:
    return {
        str(path.relative_to(run_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in run_dir.rglob("*")
        if path.is_file() and path.name != "summary.json"
    }


def test_evaluate_adds_the_metrics_to_an_existing_run_and_rewrites_nothing_else(tmp_path, data_root):
    run_dir = tmp_path / "plain"
    summary = train(run_dir, data_root, "model=mlp_vae", "evaluation.enabled=false")
    assert summary["metrics"] is None
    before = _digests(run_dir)
    assert evaluate_main([str(tmp_path)]) == 0
    after = json.loads((run_dir / "summary.json").read_text())
    assert after["test"] == summary["test"] and after["status"] == "completed"
    assert after["metrics"]["iwae"]["nll_k1"] > 0
    changed = {name for name, digest in _digests(run_dir).items() if before.get(name) != digest}
    assert changed == {"class_histogram.png", "interpolation.png"}  # new figures only


def test_a_run_without_figures_draws_none_and_its_evaluation_adds_none(tmp_path, data_root):
    run_dir = tmp_path / "run"
    summary = train(run_dir, data_root, "model=mlp_vae", "trainer.figures=false")
    assert summary["status"] == "completed" and summary["figures"] == [] and summary["metrics"]["iwae"]
    assert list(run_dir.glob("*.png")) == []
    assert evaluate_main([str(run_dir)]) == 0
    assert json.loads((run_dir / "summary.json").read_text())["figures"] == []
    assert list(run_dir.glob("*.png")) == []
    assert "Figures: none (trainer.figures=false)" in (run_dir / "train.log").read_text()


def test_evaluate_gives_the_same_numbers_as_the_run_did(vae_summary):
    run_dir, summary = vae_summary
    assert evaluate_main([str(run_dir)]) == 0
    again = summary_numbers(json.loads((run_dir / "summary.json").read_text())["metrics"])
    before = summary_numbers(summary["metrics"])
    before.pop("evaluation_s")
    assert {key: again[key] for key in before} == pytest.approx(before, rel=1e-5)
    kl_per_dim = json.loads((run_dir / "summary.json").read_text())["metrics"]["latent"]["kl_per_dim"]
    assert kl_per_dim == pytest.approx(summary["metrics"]["latent"]["kl_per_dim"], rel=1e-5)


def test_evaluate_can_keep_the_runs_iwae_bound_and_takes_settings_for_this_evaluation(vae_summary, capsys):
    run_dir, summary = vae_summary
    assert evaluate_main([str(run_dir), "--reuse", "iwae", "--set", "hole_draws=300"]) == 0
    again = json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert (
        again["iwae"] == summary["metrics"]["iwae"] and again["latent_holes"]["prior"]["prior_draws"] == 300
    )
    assert evaluate_main([str(run_dir), "--set", "hole_draw=300"]) == 1  # a misspelt key: the run is skipped
    assert "hole_draw: not an evaluation key" in capsys.readouterr().err


def test_evaluate_on_a_folder_without_runs_says_so(tmp_path, capsys):
    assert evaluate_main([str(tmp_path)]) == 2
    assert "no runs under" in capsys.readouterr().err


def test_the_classifier_command_trains_once_then_reuses_its_cache(tmp_path):
    root = write_fake_mnist(tmp_path / "data")
    command = [
        python(),
        "-m",
        "vae_lab.evaluation.classifier",
        f"data.root={root}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "evaluation.classifier.epochs=1",
        "trainer.progress=false",
    ]
    first = warm_start.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (
        "training the sample metrics' classifier (10 classes: 0, 1, 2" in first.stdout
        and "test accuracy" in first.stdout
    )
    # without progress bars, each epoch still says it is done
    assert re.search(r"classifier epoch 1/1: training loss \d+\.\d{4}, \d+ s", first.stdout), first.stdout
    cached = list((root / "classifiers").glob("digit_classifier-*.pt"))
    assert len(cached) == 1
    second = warm_start.run(command, capture_output=True, text=True, timeout=300)
    assert (
        "training the sample metrics' classifier (10 classes: 0, 1, 2" not in second.stdout
        and str(cached[0]) in second.stdout
    )
    changed = warm_start.run(
        [*command, "evaluation.classifier.epochs=2"], capture_output=True, text=True, timeout=300
    )
    assert (
        "training the sample metrics' classifier (10 classes: 0, 1, 2" in changed.stdout
    )  # other settings, other checksum
    assert len(list((root / "classifiers").glob("digit_classifier-*.pt"))) == 2


def test_the_classifier_trains_and_loads_in_channels_last_with_the_same_answers(tmp_path, fake_mnist_root):
    import copy

    from vae_lab.data import load_mnist
    from vae_lab.evaluation.classifier import classify, load_or_train

    data = load_mnist(str(fake_mnist_root), download=False)
    settings = {"epochs": 1, "batch_size": 64, "lr": 1e-3, "seed": 0}
    trained, _, path = load_or_train(data, str(tmp_path / "data"), settings, progress=False)
    loaded, _, cached = load_or_train(data, str(tmp_path / "data"), settings, progress=False)
    assert cached == path and path.exists()
    for classifier in (trained, loaded):
        assert classifier.body[4].weight.is_contiguous(memory_format=torch.channels_last)  # 32 -> 64
    contiguous = copy.deepcopy(loaded).to(memory_format=torch.contiguous_format)
    assert not contiguous.body[4].weight.is_contiguous(memory_format=torch.channels_last)
    answers = zip(classify(loaded, data.test_images), classify(contiguous, data.test_images), strict=True)
    for ours, plain in answers:  # probabilities, then features
        torch.testing.assert_close(ours, plain, rtol=1e-4, atol=1e-5)


def test_evaluate_on_a_folder_whose_config_is_not_a_run_s_says_so_in_one_line(tmp_path, capsys):
    folder = tmp_path / "not_a_run"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("db:\n  driver: mysql\n")  # some other app's Hydra config
    (folder / "checkpoint.pt").write_bytes(b"")
    assert evaluate_main([str(folder)]) == 1
    err = capsys.readouterr().err
    assert "is not the config of a vae_lab run: it has no model._target_" in err and "Traceback" not in err


def test_load_run_reads_a_run_whose_model_config_held_the_speed_options(tmp_path):
    """A run folder written while fused_blocks and the like sat in conf/model: the plain model loads."""
    import yaml

    from vae_lab import load_run
    from vae_lab.models import VAE, ConvDecoder, ConvEncoder
    from vae_lab.training import checkpoint as checkpoints

    model = VAE(2, ConvEncoder(batch_norm=True, dropout=0.3), ConvDecoder(2))
    config = {
        "model": {
            "_target_": "vae_lab.models.VAE",
            "latent_dim": 2,
            "encoder": {
                "_target_": "vae_lab.models.ConvEncoder",
                "batch_norm": True,
                "dropout": 0.3,
                "fused_blocks": True,
            },
            "decoder": {
                "_target_": "vae_lab.models.ConvDecoder",
                "latent_dim": 2,
                "one_channel_kernel": True,
            },
        }
    }
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    state = {
        "model": model.state_dict(),
        "optimizer": {},
        "epoch": 1,
        "history": [],
        "torch_rng": torch.get_rng_state(),
    }
    state |= {"cuda_rng": [], "order_rng": torch.Generator().get_state(), "config": config, "hydra_files": {}}
    torch.save(state | {"format_version": checkpoints.FORMAT_VERSION}, tmp_path / "checkpoint.pt")
    run = load_run(tmp_path)
    assert type(run.model.encoder.body[3]) is torch.nn.Dropout  # the plain layers
    codes = torch.randn(4, 2)
    torch.testing.assert_close(run.model.decoder(codes), model.eval().decoder(codes))
