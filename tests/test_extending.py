"""Extending vae_lab through config alone (docs/extending.md): a model with constructor arguments of its
own, a loss with a third named term, and a data set with a key of its own, all defined in tests/toys.py
and picked from a config folder of the user's own (hydra.searchpath), trained end to end by the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import warm_start
from tests.conftest import REPO

TOY_CONF = Path(__file__).with_name("toy_conf")


def train(run_dir: Path, data_root: Path, *overrides: str) -> subprocess.CompletedProcess:
    return warm_start.run(
        [
            sys.executable,
            "-m",
            "vae_lab.train",
            f"hydra.searchpath=[file://{TOY_CONF}]",
            f"hydra.run.dir={run_dir}",
            f"data.root={data_root}",
            "trainer.epochs=2",
            "trainer.batch_size=64",
            "evaluation.enabled=false",
            *overrides,
        ],
        cwd=REPO,  # tests.toys importable, as a user's own package would be
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    from tests.conftest import write_fake_mnist

    root = write_fake_mnist(tmp_path_factory.mktemp("mnist"))
    run_dir = tmp_path_factory.mktemp("runs") / "toy"
    result = train(run_dir, root, "model=scaled_prior_vae", "loss=elbo_code_l1", "data=inverted_mnist")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, root


def test_a_model_with_arguments_of_its_own_trains_through_config_alone(toy_run):
    from vae_lab import load_run

    run_dir, _ = toy_run
    run = load_run(run_dir)
    assert type(run.model).__name__ == "ScaledPriorVAE" and run.model.prior_scale == 0.5
    assert run.config.model.prior_scale == 0.5


def test_a_loss_s_own_term_is_logged_per_epoch_in_the_summary_and_in_compare_s_csv(toy_run, tmp_path):
    from vae_lab.compare import compare

    run_dir, _ = toy_run
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 2
    for record in epochs:
        for split in ("train", "test"):
            parts = record[split]
            assert list(parts)[:3] == ["total", "recon", "kl"] and parts["code_l1"] > 0
            # the total is the weighted sum of its terms, as the toy loss defines it
            expected = parts["recon"] + parts["kl"] + 0.1 * parts["code_l1"]
            assert parts["total"] == pytest.approx(expected, rel=1e-5)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"]["code_l1"] == epochs[-1]["test"]["code_l1"]
    compare([run_dir], out=tmp_path / "compared")
    header = (tmp_path / "compared" / "comparison.csv").read_text().splitlines()[0].split(",")
    assert "test_code_l1" in header and "train_code_l1" in header


def test_a_data_set_with_a_key_of_its_own_is_built_from_its_config(toy_run):
    from tests.toys import load_inverted_mnist
    from vae_lab.data import load_mnist

    run_dir, root = toy_run
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "tests.toys.load_inverted_mnist" in config and "invert: true" in config
    inverted, plain = load_inverted_mnist(str(root)), load_mnist(str(root), download=False)
    assert torch.equal(inverted.test_images, 255 - plain.test_images)


def test_an_argument_the_model_does_not_take_is_refused_in_one_line(tmp_path, fake_mnist_root):
    result = train(tmp_path / "run", fake_mnist_root, "+model.num_flows=4")
    said = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in said
    assert "model could not be built from its config" in said and "num_flows" in said


def test_a_loss_term_named_like_a_built_in_part_is_refused():
    from vae_lab.losses import LossParts

    zero = torch.zeros(())
    with pytest.raises(ValueError, match="cannot be named kl"):
        LossParts(total=zero, recon=zero, kl=zero, terms={"kl": zero}).named()
