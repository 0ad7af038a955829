"""Every config composes through Hydra's compose API, and bad values fail with clear messages."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf.errors import ValidationError

from tests import warm_start
from tests.conftest import REPO, build_run, python, write_fake_mnist
from vae_lab.config import check_config, register_schemas
from vae_lab.devices import resolve_device
from vae_lab.errors import ConfigError
from vae_lab.training.launchers import key_and_value, require_writable_output

CONF = REPO / "conf"
GROUP_CHOICES = {
    group: sorted(path.stem for path in (CONF / group).glob("*.yaml"))
    for group in ("data", "model", "loss", "optimizer", "trainer", "experiment")
}


def compose_config(*overrides: str):
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_the_named_choices_exist():
    assert {"ae", "vae", "mlp_ae", "mlp_vae"} <= set(GROUP_CHOICES["model"])
    assert {"recon", "kl", "elbo"} <= set(GROUP_CHOICES["loss"])
    assert {"mnist"} <= set(GROUP_CHOICES["data"])
    assert {"article_ae", "article_vae"} <= set(GROUP_CHOICES["experiment"])


@pytest.mark.parametrize(
    "group,choice", [(group, choice) for group, choices in GROUP_CHOICES.items() for choice in choices]
)
def test_every_choice_composes_and_passes_the_checks(group, choice):
    cfg = compose_config(f"{group}={choice}")
    check_config(cfg)
    if group in ("model", "loss"):
        instantiate(cfg[group])


@pytest.mark.parametrize("model", ["ae", "vae", "mlp_ae", "mlp_vae"])
def test_latent_dim_override_reaches_the_model(model):
    cfg = compose_config(f"model={model}", "model.latent_dim=5", "loss=recon")
    built, _, _ = build_run(cfg)
    assert built.latent_dim == 5
    assert built(torch.rand(2, 1, 28, 28)).code.shape == (2, 5)


def test_the_article_experiments_carry_the_article_settings():
    ae = compose_config("experiment=article_ae")
    assert ae.model._target_.endswith("Autoencoder") and ae.loss._target_.endswith("Reconstruction")
    assert (ae.trainer.epochs, ae.trainer.batch_size, ae.optimizer.lr, ae.model.latent_dim) == (
        20,
        128,
        1e-3,
        2,
    )
    vae = compose_config("experiment=article_vae")
    assert vae.model._target_.endswith("VAE") and vae.loss._target_.endswith("ELBO")
    assert (vae.trainer.epochs, vae.optimizer.lr, vae.model.latent_dim) == (10, 1e-3, 2)
    assert vae.model.encoder.batch_norm and vae.model.encoder.dropout == 0.3


def test_a_misspelt_key_fails_when_composing():
    with pytest.raises(ConfigCompositionException, match="latnt_dim"):
        compose_config("model.latnt_dim=3")


def test_a_misspelt_key_in_a_yaml_file_fails_when_merged(tmp_path):
    experiment = tmp_path / "experiment"
    experiment.mkdir()
    (experiment / "typo.yaml").write_text("# @package _global_\ntrainer:\n  epoch: 3\n")
    with pytest.raises(ConfigCompositionException) as caught:
        compose_config(f"hydra.searchpath=[file://{tmp_path}]", "experiment=typo")
    assert "epoch" in str(caught.value.__cause__ or caught.value)


def test_a_wrong_type_fails_when_composing():
    with pytest.raises((ConfigCompositionException, ValidationError), match="trainer.epochs"):
        compose_config("trainer.epochs=ten")


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.latent_dim=0", "model.latent_dim"),
        ("model.latent_dim=-3", "model.latent_dim"),
        ("trainer.epochs=-1", "trainer.epochs"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.lr=-0.001", "optimizer.lr"),
        ("optimizer.lr=nan", "optimizer.lr"),
        ("optimizer.eps=0", "optimizer.eps"),
        ("loss.kl_weight=-1", "loss.kl_weight"),
        ("data.limit=0", "data.limit"),
        ("device=tpu", "device"),
    ],
)
def test_out_of_range_values_name_key_value_and_what_is_allowed(override, key):
    cfg = compose_config(override)
    with pytest.raises(ConfigError) as caught:
        check_config(cfg)
    message = str(caught.value)
    value = override.split("=", 1)[1]
    assert message.startswith(f"{key}=") and "must be" in message
    assert value.lstrip("-").rstrip("0").rstrip(".") in message or value in message


def test_a_kl_term_on_a_deterministic_autoencoder_is_a_config_error():
    cfg = compose_config("model=ae", "loss=elbo")
    with pytest.raises(ConfigError, match="deterministic autoencoder"):
        build_run(cfg)


def test_another_optimizer_is_one_override_and_a_given_eps_reaches_adam():
    _, _, sgd = build_run(compose_config("optimizer._target_=torch.optim.SGD"))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["lr"] == 1e-3
    _, _, default = build_run(compose_config())
    _, _, given = build_run(compose_config("optimizer.eps=1e-4"))
    assert (default.defaults["eps"], given.defaults["eps"]) == (1e-8, 1e-4)


def test_cuda_asked_for_without_cuda_is_a_config_error(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="device='cuda'"):
        resolve_device("cuda")


def _train_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return warm_start.run(
        [python(), "-m", "vae_lab.train", *overrides], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "override,expected",
    [
        ("model.latent_dim=0", "model.latent_dim=0 is not allowed: it must be a positive integer"),
        ("loss=nonsense", "Available options in 'loss'"),
        ("trainer.epochs=ten", "trainer.epochs"),
        ("model.latnt_dim=4", "latnt_dim"),
        ("+trainer.epoch=3", "trainer.epoch is not a key vae_lab knows: did you mean trainer.epochs?"),
    ],
)
def test_bad_input_on_the_command_line_gives_one_message_and_no_traceback(tmp_path, override, expected):
    result = _train_cli(override, f"hydra.run.dir={tmp_path / 'run'}", "data.root=/nonexistent", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert expected in result.stderr + result.stdout


def test_a_quoted_run_folder_is_made_as_hydra_reads_it_without_its_quotes(tmp_path, monkeypatch):
    """Processes 1..N-1 of a torchrun run get hydra.run.dir='...' quoted; so may a folder with spaces."""
    monkeypatch.chdir(tmp_path)
    require_writable_output([f"hydra.run.dir='{tmp_path}/a run/it\\'s'", "model=vae"])
    assert (tmp_path / "a run" / "it's").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["a run"]  # no folder named after the quote
    assert key_and_value("hydra.sweep.dir=/tmp/a:b@c") == ("hydra.sweep.dir", "/tmp/a:b@c")
    assert key_and_value("trainer.epochs=[1,2") == ("trainer.epochs", "[1,2")  # Hydra will say what is wrong


def test_a_run_folder_that_cannot_be_made_is_said_in_one_line(tmp_path):
    result = _train_cli("hydra.run.dir=/proc/vae_lab_run", cwd=tmp_path)  # /proc looks writable to root
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    assert "cannot make the output folder /proc/vae_lab_run" in result.stderr


def test_a_model_made_for_other_images_is_refused_before_training_naming_both_shapes(tmp_path):
    root = write_fake_mnist(tmp_path / "data")
    run_dir = tmp_path / "run"
    result = _train_cli("model=vae_celeba", f"data.root={root}", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    assert "the model makes 3x64x64 images, and the data's are 1x28x28" in result.stderr + result.stdout
    assert not (run_dir / "checkpoint.pt").exists()


def test_a_run_that_fails_its_checks_is_marked_failed_in_its_folder(tmp_path):
    run_dir = tmp_path / "run"
    result = _train_cli("model=ae", "loss=kl", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "deterministic autoencoder" in summary["error"]
    assert not (run_dir / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "overrides", [[], ["experiment=burda2015"], ["experiment=davidson2018"], ["data=celeba"]]
)
def test_the_resume_key_holds_what_a_run_is_and_no_key_of_how_it_ran(overrides):
    from vae_lab.operational import is_operational
    from vae_lab.settings import read_settings
    from vae_lab.training.run_folder import flatten

    settings = read_settings(compose_config(*overrides), REPO / "no_run_folder")
    key = flatten(settings.resume_key)
    assert [name for name in key if is_operational(name)] == []
    config = flatten(settings.config)
    for group in ("model", "loss", "data"):  # every key of what the run is, none left out
        kept = {name for name in config if name.startswith(f"{group}.") and not is_operational(name)}
        assert kept <= set(key), sorted(kept - set(key))
    assert key["seed"] == config["seed"] and key["trainer.batch_size"] == config["trainer.batch_size"]


def test_hydra_leaves_out_of_folder_names_exactly_the_declared_operational_keys():
    from omegaconf import OmegaConf

    from vae_lab.operational import OPERATIONAL_GROUPS, OPERATIONAL_KEYS, is_operational
    from vae_lab.training.run_folder import flatten

    register_schemas()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    # seed and experiment are no operational keys: the job number keeps seeds apart, and an experiment's
    # values name the folder themselves
    assert {key for key in excluded if not is_operational(key)} == {"seed", "experiment"}
    config = OmegaConf.to_container(cfg, resolve=False)
    leaves = {
        f"{group}.{key}"
        for group in OPERATIONAL_GROUPS
        if group != "hydra" and isinstance(config.get(group), dict)
        for key in flatten(config[group])
    }
    wanted = (OPERATIONAL_KEYS | leaves | {"logger", "speed"}) - {
        key for key in leaves if key.endswith("_target_")
    }
    assert sorted(wanted - excluded) == []
