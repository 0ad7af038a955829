"""logger=mlflow (docs/trackers.md#mlflow): a sweep's jobs as child runs of one parent in a SQLite store,
each with the config as params, the numbers of each epoch with their step, the summary's numbers and the
figures as artifacts, read back with MLflow's own client. Offline: the store is a file the test makes."""

import json
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_fake_mnist
from tests.test_trackers import compose_config, train
from vae_lab.errors import ConfigError
from vae_lab.training.loggers import MlflowLogger, RunContext
from vae_lab.training.run_folder import flatten

# looked up, not imported: mlflow takes a second to import, and every pytest worker collects this file
pytestmark = [
    pytest.mark.skipif(find_spec(name) is None, reason=f"{name} is not installed")
    for name in ("mlflow", "hydra_plugins.hydra_joblib_launcher")
]

LOSS_CLASSES = {"kl": "vae_lab.losses.KL", "elbo": "vae_lab.losses.ELBO"}


def client(database: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{database}")


def runs_of(database: Path) -> list:
    store = client(database)
    return store.search_runs(
        [store.get_experiment_by_name("vae_lab").experiment_id], order_by=["attributes.run_name"]
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """loss=kl,elbo for 2 epochs, both jobs at once (joblib), logging to one SQLite store; give back
    (the store's file, the sweep folder)."""
    tmp = tmp_path_factory.mktemp("mlflow")
    root = write_fake_mnist(tmp / "data")
    database, sweep_dir = tmp / "store" / "mlflow.db", tmp / "sweep"
    result = train(
        tmp,
        "loss=kl,elbo",
        "trainer.epochs=2",
        "evaluation.enabled=false",
        f"data.root={root}",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "logger=mlflow",
        f"logger.tracking_uri=sqlite:///{database}",
        multirun=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return database, sweep_dir


def test_a_sweep_is_one_parent_run_with_a_child_per_job(sweep):
    database, sweep_dir = sweep
    runs = runs_of(database)
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    (parent,) = parents  # the two jobs started at once made one parent between them
    assert parent.data.tags["vae_lab.sweep_parent"] == str(sweep_dir)
    assert parent.info.run_name == sweep_dir.name
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    jobs = sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    assert [p.name for p in jobs] == [
        "0_loss=kl,trainer.batch_size=64,trainer.epochs=2",
        "1_loss=elbo,trainer.batch_size=64,trainer.epochs=2",
    ]
    assert sorted(run.info.run_name for run in children) == sorted(p.name.partition("_")[2] for p in jobs)
    assert len(runs) == 3
    assert {run.info.status for run in runs} == {"FINISHED"}


def test_each_job_has_its_config_its_epochs_its_summary_and_its_figures(sweep):
    database, sweep_dir = sweep
    store = client(database)
    for run in runs_of(database):
        if "mlflow.parentRunId" not in run.data.tags:
            continue
        job = Path(run.data.tags["vae_lab.run_dir"])
        assert job.parent == sweep_dir
        params = run.data.params
        loss = run.info.run_name.split(",")[0].removeprefix("loss=")
        assert params["loss._target_"] == LOSS_CLASSES[loss] and params["trainer.epochs"] == "2"
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert set(params) == set(flatten(config))  # the whole config, one param a key
        epochs = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
        history = store.get_metric_history(run.info.run_id, "test/total")
        assert [(m.step, m.value) for m in history] == [
            (e["epoch"], pytest.approx(e["test"]["total"], rel=1e-6)) for e in epochs
        ]
        summary = json.loads((job / "summary.json").read_text())
        assert run.data.metrics["wall_time_s"] == pytest.approx(summary["wall_time_s"])
        assert run.data.metrics["epochs"] == 2
        assert run.data.tags["vae_lab.status"] == "completed"
        figures = [a.path for a in store.list_artifacts(run.info.run_id, "figures")]
        assert figures == sorted(f"figures/{name}" for name in summary["figures"])
        local = Path(store.download_artifacts(run.info.run_id, figures[0], str(job.parent / "read_back")))
        assert local.read_bytes() == (job / Path(figures[0]).name).read_bytes()


def test_a_single_run_has_no_parent_and_keeps_the_evaluations_numbers(tmp_path):
    from PIL import Image

    database = tmp_path / "mlflow.db"
    figure = tmp_path / "samples.png"
    Image.new("RGB", (4, 4)).save(figure)
    logger = MlflowLogger(tmp_path, tracking_uri=f"sqlite:///{database}", experiment="vae_lab")
    logger.start(RunContext(name="run", config={"loss": {"kl_weight": 0.5}, "seed": 0}))
    logger.log_epoch({"epoch": 1, "train": {"total": 9.0}, "test": {"total": 8.0, "kl": None}})
    logger.log_metrics({"iwae": {"nll_k10": 90.5}}, step=1)
    logger.log_figures([figure], step=1)
    logger.close()  # before finish(): the run failed
    (run,) = runs_of(database)
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.params == {"loss.kl_weight": "0.5", "seed": "0"}
    assert run.data.metrics == {"train/total": 9.0, "test/total": 8.0, "metrics/iwae/nll_k10": 90.5}
    assert run.info.status == "FAILED"
    assert [a.path for a in client(database).list_artifacts(run.info.run_id, "figures")] == [
        "figures/samples.png"
    ]


def test_mlflow_is_a_backend_of_several_loggers():
    cfg = compose_config("logger=multi", "logger/backends=[tensorboard,mlflow]")
    assert list(cfg.logger.backends) == ["tensorboard", "mlflow"]
    assert cfg.logger.backends.mlflow.tracking_uri == "sqlite:///outputs/mlflow.db"


def test_a_missing_mlflow_or_a_bad_option_is_one_message(tmp_path, monkeypatch):
    with pytest.raises(
        ConfigError, match=r"logger.experiment='' is not allowed: it must be an MLflow experiment"
    ):
        MlflowLogger(tmp_path, experiment="")
    monkeypatch.setitem(__import__("sys").modules, "mlflow.tracking", None)
    with pytest.raises(ConfigError, match=r"pip install -c constraints.txt -e '.\[mlflow\]'"):
        MlflowLogger(tmp_path)
