"""The trackers (docs/trackers.md): TensorBoard's HParams and Projector, Weights & Biases offline, several
loggers at once, and the Optuna search; each read back with the tracker's own readers. Offline."""

import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from tests import warm_start
from tests.conftest import FAST_EVALUATION, python, write_fake_mnist
from vae_lab.config import check_config, register_schemas
from vae_lab.errors import ConfigError
from vae_lab.train import objective_value
from vae_lab.training.launchers import require_sweeper_plugin
from vae_lab.training.loggers import MultiLogger, RunContext, TensorBoardLogger, WandbLogger, parse_overrides

TINY = ["trainer.epochs=1", "trainer.batch_size=64", "trainer.eval_batch_size=64", "trainer.progress=false"]
TINY += ["trainer.threads=1", *FAST_EVALUATION]


def offline_env(tmp_path: Path) -> dict[str, str]:
    """W&B offline, with its settings and cache in tmp_path: no account, no network, nothing in ~."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return env | {
        "WANDB_MODE": "offline",
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
    }


def train(tmp_path: Path, *overrides: str, env=None, multirun=False) -> subprocess.CompletedProcess:
    command = [python(), "-m", "vae_lab.train", *(["-m"] if multirun else []), *TINY, *overrides]
    return warm_start.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


def tensorboard_events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0}).Reload()


def hparams_of(folder: Path) -> tuple[dict, list[str], int]:
    """Give back (hyper-parameters, the experiment's metric tags, session end status) of a TensorBoard
    run, parsed by the hparams plugin's own metadata reader."""
    from tensorboard.plugins.hparams import metadata

    events = tensorboard_events(folder)
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    hparams = {}
    for name, value in start.hparams.items():
        hparams[name] = value.string_value if value.HasField("string_value") else value.number_value
    return hparams, [info.name.tag for info in experiment.metric_infos], end.status


def projector_of(folder: Path):
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    return text_format.Parse((folder / "projector_config.pbtxt").read_text(), ProjectorConfig())


def wandb_records(run_folder: Path) -> list[dict]:
    """Read an offline W&B run's transaction log (.wandb) back with W&B's own reader, as JSON records."""
    result = subprocess.run(
        [str(Path(python()).parent / "wandb"), "leet", "inspect", "--json", str(run_folder)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


# ---------------------------------------------------------------- TensorBoard, in-process


def test_tensorboard_hparams_and_projector_read_back(tmp_path):
    from PIL import Image

    shown = ["test.total", "metrics.a.b", "nope"]
    logger = TensorBoardLogger(tmp_path, projector_images=5, hparams_metrics=shown)
    logger.start(RunContext(name="loss=kl,seed=1", hparams={"loss": "kl", "seed": 1, "loss.kl_weight": 0.5}))
    logger.log_epoch({"epoch": 1, "train": {"total": 9.0}, "test": {"total": 8.0, "kl": None}})
    logger.log_epoch({"epoch": 2, "train": {"total": 7.0}, "test": {"total": 6.0, "kl": None}})
    logger.log_metrics({"a": {"b": 0.25}}, step=2)
    codes = torch.arange(10.0).reshape(5, 2)  # 2-d: written with a zero third column
    images = torch.rand(5, 1, 28, 28)
    logger.log_embedding(codes, ["7", "2", "1", "0", "4"], images, step=2)
    logger.finish({"test": {"total": 6.0, "kl": None}, "metrics": {"a": {"b": 0.25}}})
    logger.close()

    folder = tmp_path / "tensorboard"
    hparams, metric_tags, status = hparams_of(folder)
    assert hparams == {"loss": "kl", "seed": 1.0, "loss.kl_weight": 0.5}
    assert metric_tags == ["test/total", "metrics/a/b"]  # only those the run has; "nope" is left out
    from tensorboard.plugins.hparams import api_pb2

    assert status == api_pb2.STATUS_SUCCESS
    scalars = tensorboard_events(folder).Scalars("test/total")
    assert [(s.step, s.value) for s in scalars] == [(1, 8.0), (2, 6.0)]  # the plugin shows the last: 6.0

    (embedding,) = projector_of(folder).embeddings
    assert embedding.tensor_name.startswith("test_codes")
    assert list(embedding.sprite.single_image_dim) == [28, 28]
    assert (folder / embedding.metadata_path).read_text().split() == ["7", "2", "1", "0", "4"]
    rows = (folder / embedding.tensor_path).read_text().strip().splitlines()
    assert [[float(x) for x in row.split("\t")] for row in rows] == [[*code, 0.0] for code in codes.tolist()]
    sprite = Image.open(folder / embedding.sprite.image_path)
    assert sprite.size == (3 * 28, 3 * 28)  # a 3 x 3 grid holds 5 thumbnails


# ---------------------------------------------------------------- a real search, TensorBoard and W&B at once


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """experiment=search for 2 trials, each run logging to TensorBoard and W&B (offline) at once; give back
    (sweep folder, job folders, the study's complete trials, both in job order)."""
    import optuna

    tmp = tmp_path_factory.mktemp("trackers")
    root = write_fake_mnist(tmp / "data")
    sweep_dir = tmp / "search"
    for n_trials in (1, 2):  # the second command goes on with the study the first one left
        result = train(
            tmp,
            "experiment=search",
            f"data.root={root}",
            f"hydra.sweep.dir={sweep_dir}",
            f"hydra.sweeper.n_trials={n_trials}",
            "objective=metrics.iwae.nll_k10",  # FAST_EVALUATION draws K = 10
            "logger=multi",
            "logger.backends.tensorboard.projector_images=20",
            "logger.backends.tensorboard.hparams_metrics=[test.total,metrics.iwae.nll_k10]",
            env=offline_env(tmp),
            multirun=True,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: p.name)
    study = optuna.load_study(study_name="vae_lab_search", storage=f"sqlite:///{sweep_dir}/optuna.db")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(jobs) == len(trials) == 2
    return sweep_dir, jobs, trials


def test_an_optuna_search_keeps_its_study_and_gets_each_runs_objective(search):
    sweep_dir, jobs, trials = search
    for trial, job in zip(trials, jobs, strict=True):
        overrides = parse_overrides(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        assert overrides["model.latent_dim"] == trial.params["model.latent_dim"] in (2, 4, 8, 16)
        assert overrides["loss.kl_weight"] == pytest.approx(trial.params["loss.kl_weight"])
        assert 0.1 <= trial.params["loss.kl_weight"] <= 4.0
        summary = json.loads((job / "summary.json").read_text())
        assert trial.value == pytest.approx(summary["metrics"]["iwae"]["nll_k10"], rel=1e-6)
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(t.value for t in trials))


def test_running_the_search_again_goes_on_with_its_study(search):
    _, jobs, trials = search  # one trial, then the same command with n_trials=2
    assert [t.number for t in trials] == [0, 1]
    assert [job.name.split("_")[0] for job in jobs] == ["0", "1"]  # job numbers go on with the trials
    assert trials[0].params != trials[1].params  # the seeded sampler did not draw the first trial again


def test_the_search_shows_in_tensorboard_hparams_with_each_trials_values_and_numbers(search):
    _, jobs, trials = search
    for job, trial in zip(jobs, trials, strict=True):
        summary = json.loads((job / "summary.json").read_text())
        hparams, metric_tags, _ = hparams_of(job / "tensorboard")
        assert hparams["model.latent_dim"] == trial.params["model.latent_dim"]
        assert hparams["loss.kl_weight"] == pytest.approx(trial.params["loss.kl_weight"])
        assert hparams == {**trial.params, "trainer.batch_size": 64, "trainer.epochs": 1}  # the folder's
        assert metric_tags == ["test/total", "metrics/iwae/nll_k10"]
        events = tensorboard_events(job / "tensorboard")
        iwae = summary["metrics"]["iwae"]["nll_k10"]
        assert events.Scalars("metrics/iwae/nll_k10")[-1].value == pytest.approx(iwae, rel=1e-6)
        (embedding,) = projector_of(job / "tensorboard").embeddings
        labels = (job / "tensorboard" / embedding.metadata_path).read_text().split()
        assert len(labels) == 20 and set(labels) <= set("0123456789")
        rows = (job / "tensorboard" / embedding.tensor_path).read_text().strip().splitlines()
        dims = max(trial.params["model.latent_dim"], 3)  # 2-d codes get a zero third column
        assert {len(row.split("\t")) for row in rows} == {dims}
        assert (job / "tensorboard" / embedding.sprite.image_path).is_file()


def test_the_search_is_in_wandb_offline_grouped_by_sweep_and_named_by_overrides(search):
    sweep_dir, jobs, trials = search
    for job, trial in zip(jobs, trials, strict=True):
        (run_folder,) = (job / "wandb").glob("offline-run-*")
        records = wandb_records(run_folder)
        run = next(r["run"] for r in records if r["type"] == "run")
        assert run["run_group"] == str(sweep_dir)
        point = [f"{key}={value}" for key, value in sorted(trial.params.items())]
        assert run["display_name"] == ",".join([*point, "trainer.batch_size=64", "trainer.epochs=1"])
        config = run["config"]["update"]
        assert config["model"]["latent_dim"] == trial.params["model.latent_dim"]
        assert config["loss"]["kl_weight"] == pytest.approx(trial.params["loss.kl_weight"])
        assert set(point) <= set(config["overrides"])
        history = [r["history"]["item"] for r in records if r["type"] == "history"]
        summary = json.loads((job / "summary.json").read_text())
        assert history[0]["epoch"] == 1
        assert history[0]["test/total"] == pytest.approx(summary["test"]["total"], rel=1e-6)
        finals = {}
        for record in records:
            if record["type"] == "summary":
                finals.update(record["summary"]["update"])
        iwae = summary["metrics"]["iwae"]["nll_k10"]
        assert finals["metrics/iwae/nll_k10"] == pytest.approx(iwae, rel=1e-6)
        assert finals["status"] == "completed"
        assert next(r["exit"]["exit_code"] for r in records if r["type"] == "exit") == 0
        images = {p.name.split("_")[0] for p in (run_folder / "files" / "media" / "images").rglob("*.png")}
        assert {"samples", "reconstructions"} <= images


# ---------------------------------------------------------------- the objective


def test_objective_value_reads_the_summary_and_names_close_keys_when_absent(caplog):
    summary = {"test": {"total": 5.0}, "metrics": {"iwae": {"nll_k100": 90.5}, "flag": True}}
    assert objective_value("metrics.iwae.nll_k100", summary) == 90.5
    assert objective_value(None, summary) is None
    assert objective_value("metrics.iwae.nll_k10", summary) is None
    assert "metrics.iwae.nll_k100" in caplog.text
    assert objective_value("metrics.flag", summary) is None
    assert objective_value("test.total", {"test": {"total": math.nan}}) is None


# ---------------------------------------------------------------- bad input: one message, no traceback


def test_missing_tracker_packages_give_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"pip install -c constraints.txt -e '.\[wandb\]'"):
        WandbLogger(run_dir=tmp_path)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(SystemExit, match=r"pip install -c constraints.txt -e '.\[optuna\]'"):
        require_sweeper_plugin(["-m", "experiment=search"])
    require_sweeper_plugin(["-m", "loss=kl,elbo"])  # a grid needs no plugin


def compose_config(*overrides: str):
    from hydra import compose, initialize_config_dir

    from tests.conftest import REPO

    register_schemas()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["logger=wandb", "logger.mode=sometimes"],
            "logger.mode='sometimes' is not allowed: it must be one of",
        ),
        (["logger=tensorboard", "logger.projector_images=-1"], "logger.projector_images=-1 is not allowed"),
        (
            ["logger=multi", "logger.backends.wandb.project="],
            "logger.backends.wandb.project='' is not allowed",
        ),
        (["logger=tensorboard", "+logger.projektor_images=3"], "did you mean logger.projector_images?"),
        (["objective=metrics.iwae.nll_k100", "evaluation.enabled=false"], "but evaluation.enabled=false"),
    ],
)
def test_a_bad_logger_option_names_key_value_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_config(compose_config(*overrides))


def test_several_loggers_are_picked_as_a_hydra_list():
    cfg = compose_config("logger=multi", "logger/backends=[tensorboard]")
    assert list(cfg.logger.backends) == ["tensorboard"]
    check_config(cfg)
    assert list(compose_config("logger=multi").logger.backends) == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match="logger=multi was given no loggers"):
        MultiLogger(run_dir=".", backends={})


def test_wandb_online_without_an_account_says_how_to_go_offline(tmp_path, monkeypatch):
    for key in [key for key in os.environ if key.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    logger = WandbLogger(run_dir=tmp_path, mode="online")
    with pytest.raises(ConfigError, match="WANDB_MODE=offline"):
        logger.start(RunContext(name="run"))
    logger.close()


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        (["hydra/sweeper=optuna"], "objective is null"),
        (["experiment=search", "evaluation.enabled=false"], "evaluation.enabled=false"),
    ],
)
def test_a_search_whose_objective_cannot_be_computed_is_refused_before_its_first_trial(
    tmp_path, overrides, why
):
    pytest.importorskip("optuna")
    sweep_dir = tmp_path / "search"
    result = train(tmp_path, *overrides, f"hydra.sweep.dir={sweep_dir}", multirun=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("the search cannot start: ") and why in lines[0]
    assert not sweep_dir.exists()  # no trial ran, nothing was written
