"""Multirun sweeps through Hydra's launchers, and `compare` over their folders."""

import csv
import json
import os
import statistics
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import warm_start
from tests.conftest import FAST_EVALUATION, REPO, python
from vae_lab.compare import compare, group, grouped_headline, read_row
from vae_lab.compare import main as compare_main
from vae_lab.errors import VaeLabError
from vae_lab.training.launchers import require_launcher_plugin

TINY = [
    "trainer.epochs=1",
    "trainer.batch_size=64",
    "trainer.eval_batch_size=64",
    "trainer.progress=false",
    *FAST_EVALUATION,
]


def sweep(tmp_path: Path, data_root: Path, *overrides: str) -> Path:
    sweep_dir = tmp_path / "sweep"
    result = warm_start.run(
        [
            python(),
            "-m",
            "vae_lab.train",
            "-m",
            f"data.root={data_root}",
            f"hydra.sweep.dir={sweep_dir}",
            *TINY,
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(
        (p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()), key=lambda p: int(p.name.split("_")[0])
    )


@pytest.fixture(scope="module")
def loss_sweep(tmp_path_factory):
    from tests.conftest import write_fake_mnist

    root = write_fake_mnist(tmp_path_factory.mktemp("data"))
    # compare draws from the runs' models: the runs' own figures are left out, as a large sweep would
    return sweep(tmp_path_factory.mktemp("loss"), root, "loss=recon,kl,elbo", "trainer.figures=false")


def test_a_loss_sweep_makes_one_readably_named_folder_per_loss(loss_sweep):
    names = [p.name for p in job_dirs(loss_sweep)]
    tiny = "trainer.batch_size=64,trainer.epochs=1"  # the tiny settings are overrides too; seeds are not
    assert names == [f"0_loss=recon,{tiny}", f"1_loss=kl,{tiny}", f"2_loss=elbo,{tiny}"]
    for job in job_dirs(loss_sweep):
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"


def test_compare_reads_back_each_runs_numbers(loss_sweep):
    written = compare([loss_sweep])
    names = {path.name for path in written}
    assert {
        "comparison.csv",
        "comparison.md",
        "curves.png",
        "latent_comparison.png",
        "reconstructions_comparison.png",
        "samples_comparison.png",
        "manifold_comparison.png",
    } <= names
    with open(loss_sweep / "comparison.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["loss"] for row in rows] == ["recon", "kl", "elbo"]
    for row in rows:
        summary = json.loads((loss_sweep / row["run"] / "summary.json").read_text())
        for part in ("total", "recon", "kl"):
            assert float(row[f"test_{part}"]) == pytest.approx(summary["test"][part], rel=1e-9)
        assert row["status"] == "completed"
    markdown = (loss_sweep / "comparison.md").read_text()
    for loss in ("recon", "kl", "elbo"):  # each run named by the one setting that tells it apart
        assert f"| loss={loss} | completed |" in markdown
    assert "Common to all runs: " in markdown and "trainer.epochs=1" in markdown


def test_the_ablation_experiment_carries_the_loss_sweep(tmp_path):
    result = warm_start.run(
        [python(), "-m", "vae_lab.train", "experiment=ablation", "--cfg", "hydra"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["hydra"]["sweeper"]["params"] == {"loss": "recon,kl,elbo"}


def _fake_run(
    folder: Path, overrides: list[str], status: str = "completed", total: float = 0.0, **extra
) -> Path:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("{}\n")
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    summary = {"status": status}
    if status == "completed":
        summary["test"] = {"total": total, "recon": total - 1, "kl": 1.0}
    summary.update(extra)
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_grouping_over_seeds_gives_mean_and_sample_standard_deviation(tmp_path):
    values = {
        ("recon", 0): 100.0,
        ("recon", 1): 104.0,
        ("recon", 2): 108.0,
        ("elbo", 0): 150.0,
        ("elbo", 1): 151.0,
    }
    rows = [
        read_row(
            _fake_run(tmp_path / f"{loss}_{seed}", [f"loss={loss}", f"seed={seed}"], total=total), tmp_path
        )
        for (loss, seed), total in values.items()
    ]
    rows.append(
        read_row(
            _fake_run(tmp_path / "broken", ["loss=recon", "seed=3"], status="failed", error="boom"), tmp_path
        )
    )
    header, body = group(rows)
    table = {line[0]: dict(zip(header, line, strict=True)) for line in body}
    assert table["recon"]["runs"] == 3 and table["elbo"]["runs"] == 2  # the failed run is left out
    assert table["recon"]["test_total mean"] == pytest.approx(104.0)
    assert table["recon"]["test_total std"] == pytest.approx(statistics.stdev([100, 104, 108]))  # 4.0
    assert table["elbo"]["test_total std"] == pytest.approx(0.7071, abs=1e-4)
    by_seed_header, by_seed = group(rows, by=["seed"])
    assert by_seed_header[0] == "seed" and {line[0] for line in by_seed} == {"0", "1", "2"}
    columns, side = grouped_headline(header, body)  # the README's table: a row a metric, a column a group
    assert columns == ["", "loss=recon", "loss=elbo"]
    assert side[0] == ["runs", 3, 2] and side[1] == ["test total", "104.00 ± 4.00", "150.50 ± 0.71"]


def test_a_failed_or_unfinished_run_shows_in_the_table_and_the_rest_are_compared(tmp_path):
    _fake_run(tmp_path / "0_loss=recon", ["loss=recon"], total=120.0)
    _fake_run(tmp_path / "1_loss=kl", ["loss=kl"], status="failed", error="ConfigError: something named")
    unfinished = tmp_path / "2_loss=elbo" / ".hydra"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text("{}\n")
    (unfinished / "overrides.yaml").write_text("- loss=elbo\n")  # Hydra writes both before the job starts
    compare([tmp_path])
    with open(tmp_path / "comparison.csv") as file:
        rows = {row["loss"]: row for row in csv.DictReader(file)}
    assert rows["recon"]["status"] == "completed" and float(rows["recon"]["test_total"]) == 120.0
    assert rows["kl"]["status"] == "failed" and "something named" in rows["kl"]["error"]
    assert rows["elbo"]["status"] == "incomplete"


def test_a_sweep_with_a_failing_job_finishes_the_others(tmp_path, fake_mnist_root):
    # KL on an AE must fail
    sweep_dir = sweep(tmp_path, fake_mnist_root, "model=ae,mlp_vae", "loss=kl", "trainer.figures=false")
    jobs = job_dirs(sweep_dir)
    statuses = [json.loads((job / "summary.json").read_text()) for job in jobs]
    assert "model=ae" in jobs[0].name and statuses[0]["status"] == "failed"
    assert "deterministic autoencoder" in statuses[0]["error"]
    assert "model=mlp_vae" in jobs[1].name and statuses[1]["status"] == "completed"
    compare([sweep_dir])
    markdown = (sweep_dir / "comparison.md").read_text()
    assert "| failed |" in markdown and "| completed |" in markdown


def test_compare_on_a_folder_without_runs_says_so(tmp_path, capsys):
    assert compare_main([str(tmp_path)]) == 2
    assert "no runs under" in capsys.readouterr().err
    with pytest.raises(VaeLabError, match="not a folder"):
        compare([tmp_path / "missing"])


def test_submitit_local_runs_a_sweep(tmp_path, fake_mnist_root):
    sweep_dir = sweep(
        tmp_path,
        fake_mnist_root,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        "model=mlp_vae",
        "loss=recon,elbo",
        "trainer.figures=false",
        "evaluation.enabled=false",  # the launcher is under test, not the metrics or the figures
    )
    jobs = job_dirs(sweep_dir)
    assert [job.name.split(",")[0] for job in jobs] == ["0_loss=recon", "1_loss=elbo"]
    for job in jobs:
        assert json.loads((job / "summary.json").read_text())["status"] == "completed"


def test_the_slurm_preset_requeues_and_asks_for_a_gpu(tmp_path):
    result = warm_start.run(
        [python(), "-m", "vae_lab.train", "hydra/launcher=slurm", "--cfg", "hydra"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    launcher = yaml.safe_load(result.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (
        launcher["max_num_timeout"] > 0 and launcher["gpus_per_node"] == 1 and launcher["partition"] is None
    )


def test_a_missing_launcher_plugin_gets_an_install_hint(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(SystemExit, match=r"pip install .*\[launchers\]"):
        require_launcher_plugin(["-m", "hydra/launcher=joblib"])
    require_launcher_plugin(["-m", "loss=recon,kl"])  # no launcher asked for: nothing to check


def test_a_swept_numeric_key_gets_a_figure_of_the_final_metrics_against_it(tmp_path):
    for index, (latent, seed, total) in enumerate(
        [(2, 0, 150.0), (2, 1, 152.0), (8, 0, 120.0), (32, 0, 110.0)]
    ):
        _fake_run(tmp_path / f"{index}_run", [f"model.latent_dim={latent}", f"seed={seed}"], total=total)
    written = {path.name for path in compare([tmp_path])}
    assert "metrics_vs_model.latent_dim.png" in written and "metrics_vs_seed.png" not in written
    assert "comparison_grouped.csv" in written  # two seeds share latent_dim=2
    with open(tmp_path / "comparison_grouped.csv") as file:
        groups = {row["model.latent_dim"]: row for row in csv.DictReader(file)}
    assert float(groups["2"]["test_total mean"]) == 151.0 and groups["2"]["runs"] == "2"


def test_the_ablation_script_runs_its_jobs_at_once_trains_the_classifier_once_and_compares(
    tmp_path, fake_mnist_root
):
    """experiments/ablation.py is what `make demo` runs."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep_dir = tmp_path / "ablation"
    result = warm_start.run(
        [
            python(),
            str(REPO / "experiments" / "ablation.py"),
            f"data.root={fake_mnist_root}",
            f"hydra.sweep.dir={sweep_dir}",
            *TINY,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Sweep folder: {sweep_dir}" in result.stdout
    assert "Joblib.Parallel(n_jobs=3" in result.stdout and "launching 3 jobs" in result.stdout
    jobs = job_dirs(sweep_dir)
    assert [job.name.split(",")[0] for job in jobs] == ["0_loss=recon", "1_loss=kl", "2_loss=elbo"]
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["threads"] == 1
    assert len(list((fake_mnist_root / "classifiers").glob("*.pt"))) == 1  # trained once, before the jobs
    assert (sweep_dir / "comparison.md").is_file() and (sweep_dir / "latent_comparison.png").is_file()


def _descendants(pid: int) -> set[int]:
    """Every process below pid, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, frontier = set(), [pid]
    while frontier:
        below = children.get(frontier.pop(), [])
        found.update(below)
        frontier.extend(below)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc (Linux)")
def test_a_killed_joblib_sweep_leaves_no_process_training_and_restarts_jobs_that_share_the_cores(
    tmp_path, fake_mnist_root
):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    import signal
    import time

    share = max(1, (os.cpu_count() or 1) // 2)  # two jobs at once
    explicit = share + 1  # unlike the share on any machine
    sweep_dir = tmp_path / "sweep"
    command = [
        python(),
        "-m",
        "vae_lab.train",
        "-m",
        f"data.root={fake_mnist_root}",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model=mlp_vae",
        f"trainer.threads=null,{explicit}",
        *TINY,
        "trainer.figures=false",
        "trainer.epochs=400",  # far longer than the test waits
        "evaluation.enabled=false",
    ]
    parent = warm_start.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(list(sweep_dir.glob("*/checkpoint.pt"))) < 2:  # both jobs have trained an epoch
        assert parent.poll() is None and time.monotonic() < deadline, "the sweep did not start its two jobs"
        time.sleep(0.5)
    below = _descendants(parent.pid)
    assert len(below) >= 2  # the two loky workers at least
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    gone_by = time.monotonic() + 30  # a dead process stays dead: none alive by then is none alive then
    while any(_alive(pid) for pid in below) and time.monotonic() < gone_by:
        time.sleep(0.5)
    assert [pid for pid in below if _alive(pid)] == []
    for job in job_dirs(sweep_dir):
        assert json.loads((job / "summary.json").read_text())["status"] == "interrupted"
        epochs_done = len((job / "metrics.jsonl").read_text().splitlines())
        assert 1 <= epochs_done < 400
    restarted = warm_start.run(
        [*command[:-2], "trainer.epochs=2", "evaluation.enabled=false"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    # other epochs, another folder name: the restarted jobs train beside the killed ones, in the same sweep
    restarted_jobs = [job for job in job_dirs(sweep_dir) if job.name.endswith("trainer.epochs=2")]
    assert len(restarted_jobs) == 2 and len(job_dirs(sweep_dir)) == 4
    summaries = [json.loads((job / "summary.json").read_text()) for job in restarted_jobs]
    assert [summary["status"] for summary in summaries] == ["completed", "completed"]
    assert [summary["threads"] for summary in summaries] == [share, explicit]  # jobs in the sweep's order


def test_the_ablation_script_says_how_its_classifier_training_goes_before_the_jobs_start(fake_mnist_root):
    # experiments/ablation.py trains the classifier before Hydra sets up logging: its lines still show
    script = (
        "import sys; sys.path.insert(0, 'experiments'); from _launch import train_the_classifier_once; "
        f"train_the_classifier_once(['data.root={fake_mnist_root}', 'evaluation.classifier.epochs=1'])"
    )
    result = warm_start.run([python(), "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[vae_lab.evaluation.classifier][INFO] - training the sample metrics' classifier" in result.stderr
    assert "[vae_lab.evaluation.classifier][INFO] - classifier epoch 1/1: training loss" in result.stderr
    assert list((fake_mnist_root / "classifiers").glob("digit_classifier-*.pt"))
