"""experiment=davidson2018 (Davidson et al. 2018, Table 1, the Gaussian VAE): its network, the validation
split, early stopping, the KL warm-up and the importance-sampled log-likelihood with the configured K on
every test image."""

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_run, run_in_process, write_fake_mnist
from vae_lab.data import load_mnist
from vae_lab.data.images import hold_out
from vae_lab.errors import ConfigError
from vae_lab.losses import ELBO, Reconstruction
from vae_lab.models import MLPDecoder, MLPEncoder
from vae_lab.training.early_stopping import BEST_FILE, EarlyStopping, progress_of
from vae_lab.training.schedule import check_warmup_loss, kl_factor, warmed_up


def records(*validation_totals: float) -> list[dict]:
    return [{"epoch": i + 1, "validation": {"total": v}} for i, v in enumerate(validation_totals)]


# ---------------------------------------------------------------- the network


def test_one_hidden_width_keeps_the_one_layer_network_and_its_state_dict_keys():
    encoder, decoder = MLPEncoder(hidden=400), MLPDecoder(2, hidden=400)
    assert list(encoder.state_dict()) == ["body.1.weight", "body.1.bias"]
    assert list(decoder.state_dict()) == ["body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"]
    assert encoder.feature_dim == 400


def test_a_list_of_widths_gives_one_relu_layer_each_in_that_order():
    encoder, decoder = MLPEncoder(hidden=[256, 128]), MLPDecoder(5, hidden=[128, 256])
    widths = [(m.in_features, m.out_features) for m in encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [(784, 256), (256, 128)] and encoder.feature_dim == 128
    widths = [(m.in_features, m.out_features) for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [(5, 128), (128, 256), (256, 784)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in decoder.modules()) == 2
    assert decoder(torch.zeros(3, 5)).shape == (3, 1, 28, 28)


@pytest.mark.parametrize("hidden", [0, [], [256, -1], "256", [256, 1.5]])
def test_a_width_that_is_not_a_positive_integer_is_refused_with_what_would_do(hidden):
    with pytest.raises(ConfigError, match=r"hidden=.* positive integer .* \[256, 128\]"):
        MLPEncoder(hidden=hidden)


# ---------------------------------------------------------------- the validation split


def test_the_last_images_are_held_out_and_the_limit_takes_the_first_of_the_rest():
    images, labels = torch.arange(10).view(10, 1), torch.arange(10)
    train, train_labels, held_out = hold_out(images, labels, validation=3, limit=4)
    assert train.flatten().tolist() == [0, 1, 2, 3] and train_labels.tolist() == [0, 1, 2, 3]
    assert held_out.flatten().tolist() == [7, 8, 9]
    train, _, held_out = hold_out(images, labels, validation=None, limit=None)
    assert len(train) == 10 and held_out is None


@pytest.mark.parametrize("validation", [0, 10, 11])
def test_a_validation_split_that_leaves_nothing_to_train_on_is_refused(validation):
    with pytest.raises(ConfigError, match=rf"data.validation={validation} .* from 1 to 9 .* or null"):
        hold_out(torch.zeros(10, 1), torch.zeros(10), validation, None)


def test_mnist_holds_validation_images_out_binarised_once(tmp_path):
    root = write_fake_mnist(tmp_path / "data", train_count=40, test_count=10)
    data = load_mnist(str(root), download=False, binarize="dynamic", validation=15)
    assert len(data.train_images) == 25 and data.validation_images.shape == (15, 1, 28, 28)
    assert set(data.validation_images.unique().tolist()) <= {0, 255}


# ---------------------------------------------------------------- early stopping


def test_progress_counts_epochs_since_the_earliest_lowest_validation_loss():
    assert progress_of([]) is None
    progress = progress_of(records(5.0, 3.0, 4.0, 3.0, 3.5))
    assert (progress.best_total, progress.best_epoch, progress.epochs_since_best) == (3.0, 2, 3)


def test_it_stops_after_patience_epochs_without_improvement_and_keeps_the_best_weights(tmp_path):
    model = torch.nn.Linear(2, 1)
    stopper = EarlyStopping(patience=2, run_dir=tmp_path)
    history, weights = [], {}
    for epoch, total in enumerate([5.0, 3.0, 4.0, 3.5, 1.0], start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)
        weights[epoch] = model.weight.clone()
        history += [{"epoch": epoch, "validation": {"total": total}, "test": {"total": 10.0 + epoch}}]
        if stopper.after_epoch(history, model):
            break
    assert epoch == 4  # epochs 3 and 4 did not beat epoch 2; epoch 5 never ran
    assert torch.load(tmp_path / BEST_FILE)["epoch"] == 2
    kept = stopper.finish(history, model)
    assert kept["epoch"] == 2 and kept["test"]["total"] == 12.0
    assert torch.equal(model.weight, weights[2])


def test_a_resume_after_a_kill_before_the_best_weights_were_written_takes_them_from_the_model(tmp_path):
    model = torch.nn.Linear(2, 1)
    EarlyStopping(patience=3, run_dir=tmp_path).after_epoch(records(5.0), model)
    with torch.no_grad():
        model.weight.fill_(7.0)  # epoch 2's weights, in its checkpoint; the kill came before BEST_FILE
    data = type("Data", (), {"validation_images": torch.zeros(1)})()
    stopper = EarlyStopping.start(3, data, tmp_path, records(5.0, 4.0), model)
    assert torch.load(tmp_path / BEST_FILE)["epoch"] == 2
    assert not stopper.exhausted(records(5.0, 4.0, 4.5, 4.5))
    assert stopper.exhausted(records(5.0, 4.0, 4.5, 4.5, 4.5))


def test_early_stopping_without_a_validation_split_says_how_to_get_one(tmp_path):
    data = type("Data", (), {"validation_images": None})()
    assert EarlyStopping.start(None, data, tmp_path, [], None) is None
    with pytest.raises(ConfigError, match=r"patience=5 needs a validation split.*data.validation=N"):
        EarlyStopping.start(5, data, tmp_path, [], None)


# ---------------------------------------------------------------- the KL warm-up


def test_the_kl_weight_rises_linearly_from_zero_over_the_warmup_epochs():
    assert [kl_factor(epoch, 4) for epoch in range(1, 7)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert kl_factor(1, None) == 1.0


def test_a_warmed_up_loss_is_a_lowered_copy_and_the_configured_loss_is_left_alone():
    loss = ELBO(kl_weight=2.0)
    lowered = warmed_up(loss, epoch=2, warmup_epochs=4)
    assert lowered.kl_weight == 0.5 and loss.kl_weight == 2.0 and lowered is not loss
    assert warmed_up(loss, epoch=5, warmup_epochs=4) is loss


def test_a_warmup_for_a_loss_with_no_kl_weight_is_refused_with_what_would_do():
    check_warmup_loss(Reconstruction(), None)
    with pytest.raises(ConfigError, match=r"kl_warmup_epochs=3 .* Squared has none: .*loss=elbo.*=null"):
        check_warmup_loss(type("Squared", (), {})(), 3)


def test_a_warmup_for_a_loss_with_no_kl_weight_is_refused_at_the_config_check():
    from hydra import compose, initialize_config_dir

    from vae_lab.config import CONF_DIR, check_config, register_schemas

    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        refused = compose(config_name="config", overrides=["loss=recon", "trainer.kl_warmup_epochs=5"])
        allowed = compose(config_name="config", overrides=["loss=elbo", "trainer.kl_warmup_epochs=5"])
    with pytest.raises(ConfigError, match=r"kl_warmup_epochs=5 .* Reconstruction has none: .*loss=elbo"):
        check_config(refused)
    check_config(allowed)


def warmup_run(root: Path, run_dir: Path, epochs: int, resume: bool = False) -> list[dict]:
    overrides = [
        "model=mlp_vae",
        f"data.root={root}",
        "data.download=false",
        "trainer.kl_warmup_epochs=2",
        f"trainer.epochs={epochs}",
        "trainer.batch_size=32",
        "trainer.progress=false",
        "trainer.figures=false",  # the figures have tests of their own
        "device=cpu",
        "evaluation.enabled=false",
    ] + ["trainer.resume=true"] * resume
    run_in_process(run_dir, *overrides, resume=resume)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timings(record: dict) -> dict:
    return {key: value for key, value in record.items() if not key.endswith(("_s", "_per_s"))}


def test_training_lowers_the_kl_weight_the_test_split_is_measured_whole_and_a_resume_keeps_it(tmp_path):
    root = write_fake_mnist(tmp_path / "data", train_count=64, test_count=16)
    history = warmup_run(root, tmp_path / "straight", epochs=3)
    assert [record["kl_weight"] for record in history] == [0.0, 0.5, 1.0]
    first = history[0]["train"]
    assert first["total"] == pytest.approx(first["recon"], rel=1e-6)  # epoch 1 trains without the KL
    assert history[1]["train"]["total"] < history[1]["train"]["recon"] + history[1]["train"]["kl"]
    for record in history:  # the test split: the negative ELBO, whatever weight training had
        test = record["test"]
        assert test["total"] == pytest.approx(test["recon"] + test["kl"], rel=1e-5)
    warmup_run(root, tmp_path / "resumed", epochs=2)
    resumed = warmup_run(root, tmp_path / "resumed", epochs=3, resume=True)
    assert [without_timings(r) for r in resumed] == [without_timings(r) for r in history]


# ---------------------------------------------------------------- the experiment, end to end


def test_the_experiment_config_is_the_papers_protocol():
    cfg = compose_run("experiment=davidson2018")
    assert list(cfg.model.encoder.hidden) == [256, 128] and list(cfg.model.decoder.hidden) == [128, 256]
    assert cfg.data.binarize == "dynamic" and cfg.data.validation == 10000
    assert (cfg.trainer.batch_size, cfg.optimizer.lr, cfg.trainer.early_stopping.patience) == (64, 1e-3, 50)
    assert cfg.trainer.kl_warmup_epochs == 100
    assert cfg.evaluation.iwae_k == 500 and cfg.evaluation.iwae_images is None


def test_a_tiny_run_stops_early_keeps_its_best_epoch_and_estimates_with_the_configured_k(
    tmp_path, monkeypatch
):
    from vae_lab.evaluation import inference

    root = write_fake_mnist(tmp_path / "data", train_count=96, test_count=30)
    asked = []
    draws = inference.importance_draws

    def counting_draws(model, images, k, likelihood, *args, **kwargs):
        asked.append((len(images), k))
        return draws(model, images, k, likelihood, *args, **kwargs)

    monkeypatch.setattr(inference, "importance_draws", counting_draws)
    measured, scripted = EarlyStopping.validation_loss, iter([5.0, 4.0, 4.5, 4.6])

    def scripted_loss(self, *args):  # the real validation pass, its total replaced: best at epoch 2
        return measured(self, *args) | {"total": next(scripted)}

    monkeypatch.setattr(EarlyStopping, "validation_loss", scripted_loss)
    overrides = [
        "experiment=davidson2018",
        f"data.root={root}",
        "data.download=false",
        "data.validation=32",
        "trainer.epochs=4",
        "trainer.early_stopping.patience=1",
        "trainer.batch_size=32",
        "trainer.eval_batch_size=50",
        "trainer.progress=false",
        "device=cpu",
        "evaluation.iwae_k=7",
        "evaluation.mi_images=30",
        "evaluation.prior_samples=50",
        "evaluation.hole_draws=200",
        "evaluation.knn_train_images=64",
        "evaluation.classifier.epochs=1",
    ]
    run_dir = tmp_path / "run"
    summary = run_in_process(run_dir, *overrides)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = progress_of(history)
    assert len(history) == 3 and best.best_epoch == 2  # stopped by patience, not by trainer.epochs
    assert all(set(record["validation"]) >= {"total", "recon", "kl"} for record in history)
    assert summary["train_images"] == 64 and summary["epochs"] == best.best_epoch
    assert summary["test"] == history[best.best_epoch - 1]["test"]  # the kept epoch's numbers
    iwae = summary["metrics"]["iwae"]
    assert iwae["k"] == 7 and iwae["images"] == 30 and "nll_k7" in iwae
    assert {k for _, k in asked} == {7} and sum(n for n, _ in asked) == 30  # K = 7 on all 30 test images
    assert iwae["nll_k7"] <= iwae["nll_k1"] + 1e-3
    assert Path(run_dir / BEST_FILE).is_file()

    resumed = run_in_process(
        run_dir, *overrides, "trainer.resume=true", "evaluation.enabled=false", resume=True
    )
    assert resumed["epochs"] == 2 and resumed["test"] == summary["test"]  # stopped runs stay stopped
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3
