"""Comparing runs as a researcher reads them (vae_lab/labels.py, vae_lab/figures): runs named by the
fewest settings that tell them apart, common values stated once, figures lined up by those keys, latent
codes on one scale with the prior, and no drawn text over another."""

import json

import numpy as np
import pytest
import torch
import yaml

from vae_lab.compare import compare, headline_table, read_row, summary_numbers
from vae_lab.evaluation.latent_holes import aggregate_posterior_map
from vae_lab.figures import plots, side_by_side
from vae_lab.figures.side_by_side import Panel
from vae_lab.labels import distinguishing_keys, grid, run_settings, varying_keys


def fake_run(folder, choices: dict, overrides: list[str], config: dict, total: float = 100.0):
    """A finished run's folder as Hydra and vae_lab leave it, less the checkpoint."""
    (folder / ".hydra").mkdir(parents=True)
    hydra = {"hydra": {"runtime": {"choices": {"hydra/launcher": "joblib", "speed": "auto", **choices}}}}
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    summary = {"status": "completed", "test": {"total": total, "recon": total - 1, "kl": 1.0}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def article_config(model: str, latent_dim: int, epochs: int, threads: int) -> dict:
    target = {"ae": "vae_lab.models.Autoencoder", "vae": "vae_lab.models.VAE"}[model]
    return {
        "model": {"_target_": target, "latent_dim": latent_dim, "encoder": {"batch_norm": model == "vae"}},
        "loss": {"_target_": "vae_lab.losses." + ("Reconstruction" if model == "ae" else "ELBO")},
        "trainer": {
            "epochs": epochs,
            "batch_size": 128,
            "threads": threads,
            "resume": True,
            "progress": False,
        },
        "speed": {"fused_blocks": True},
        "evaluation": {"enabled": False, "prior_samples": 2000},
        "data": {"root": "/somewhere", "limit": None},
        "device": "cpu",
        "seed": 0,
    }


@pytest.fixture
def ae_against_vae(tmp_path):
    """The README's comparison: the article's AE (20 epochs) and VAE (10 epochs) at 2-d and 16-d, run
    with operational overrides that must never name them."""
    folders = []
    for index, (model, latent) in enumerate([("ae", 2), ("vae", 2), ("ae", 16), ("vae", 16)]):
        experiment = f"article_{model}"
        overrides = [
            f"experiment={experiment}",
            f"model.latent_dim={latent}",
            "evaluation.enabled=false",
            "trainer.resume=true",
            f"trainer.threads={1 + index % 2}",
            "speed.fused_blocks=false",
        ]
        choices = {"model": model, "loss": "recon" if model == "ae" else "elbo", "experiment": experiment}
        epochs = 20 if model == "ae" else 10
        config = article_config(model, latent, epochs, 1 + index % 2)
        folders.append(fake_run(tmp_path / f"{index}_run", choices, overrides, config, 100.0 + index))
    return tmp_path, folders


def test_runs_are_named_by_model_and_latent_size_alone(ae_against_vae):
    _, folders = ae_against_vae
    runs = [run_settings(folder) for folder in folders]
    assert distinguishing_keys(runs) == ["model", "model.latent_dim"]
    varying = varying_keys(runs)
    assert {"model", "loss", "trainer.epochs", "model.latent_dim"} <= set(varying)
    assert not [
        key for key in varying if key.startswith(("trainer.threads", "trainer.resume", "speed", "evaluation"))
    ]


def test_the_table_has_no_column_that_is_the_same_for_every_run_and_states_those_once(ae_against_vae):
    base, _ = ae_against_vae
    compare([base])
    csv_header = (base / "comparison.csv").read_text().splitlines()[0].split(",")
    lines = (base / "comparison.csv").read_text().splitlines()[1:]
    numbers = set(summary_numbers(json.loads((base / "0_run" / "summary.json").read_text())))
    settings = [name for name in csv_header if name not in ("run", "status", "error") and name not in numbers]
    assert "model" in settings and "model.latent_dim" in settings and "trainer.epochs" in settings
    for name in settings:  # every setting column tells runs apart; none is the same for all
        column = csv_header.index(name)
        assert len({line.split(",")[column] for line in lines}) > 1, name
    markdown = (base / "comparison.md").read_text()
    assert "Common to all runs: " in markdown and "trainer.batch_size=128" in markdown.split("|")[0]
    assert "| model=ae, model.latent_dim=2 |" in markdown and "threads" not in markdown.split("Common")[1]
    # numbers too: every run's test KL is 1.0, so it is stated once and is no column
    assert "test_kl" not in csv_header and "test_total" in csv_header
    assert "The same in every run, so no column of comparison.csv: test_kl 1.00." in markdown


def test_a_sweep_over_loss_and_seed_lines_up_rows_by_loss_and_columns_by_seed(tmp_path):
    folders = []
    for index, (loss, seed) in enumerate(
        (loss, seed) for loss in ("recon", "kl", "elbo") for seed in (0, 1, 2)
    ):
        config = {"loss": {"_target_": loss}, "seed": seed, "trainer": {"threads": 1}}
        folders.append(
            fake_run(
                tmp_path / f"{index}_loss={loss}", {"loss": loss}, [f"loss={loss}", f"seed={seed}"], config
            )
        )
    runs = [run_settings(folder) for folder in folders]
    keys = distinguishing_keys(runs)
    assert keys == ["loss", "seed"]
    rows, columns, cells, fixed = grid(runs, keys)
    assert rows == ["recon", "kl", "elbo"] and columns == ["0", "1", "2"] and fixed == {}
    assert cells[("kl", "2")] == 5 and len(cells) == 9
    header, body, same = headline_table([read_row(folder, tmp_path) for folder in folders])
    assert [line[0] for line in body][:2] == ["loss=recon, seed=0", "loss=recon, seed=1"]


def test_with_a_third_key_each_cell_shows_its_first_value_and_says_so():
    runs = [
        {"model": m, "model.latent_dim": d, "seed": s}
        for m in ("ae", "vae")
        for d in ("16", "2")
        for s in ("0", "1")
    ]
    rows, columns, cells, fixed = grid(runs, distinguishing_keys(runs))
    assert rows == ["ae", "vae"] and columns == ["2", "16"]  # numbers in numeric order
    assert fixed == {"seed": "0"} and all(runs[i]["seed"] == "0" for i in cells.values())


def cloud(scale: float, count: int = 500, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, 2)) * scale


def test_latent_panels_share_equal_axes_with_the_prior_circles_by_default():
    labels = np.arange(500) % 10
    panels = [
        Panel(0, i, f"loss={name}", cloud(scale))
        for i, (name, scale) in enumerate([("recon", 150), ("kl", 1), ("elbo", 3)])
    ]
    figure = side_by_side.latent_grid_figure(panels, labels, [str(i) for i in range(10)])
    axes = [axis for axis in figure.axes if axis.get_visible() and axis.get_title()]
    assert len({axis.get_xlim() for axis in axes}) == 1 and axes[0].get_xlim() == axes[0].get_ylim()
    assert all(
        axis.get_xscale() == "symlog" for axis in axes
    )  # ±150 beside ±1: the prior's region stays linear
    circles = [p for axis in axes for p in axis.patches if isinstance(p, plots.matplotlib.patches.Circle)]
    assert sorted({c.get_radius() for c in circles}) == [1, 2] and len(circles) == 6
    assert "shared axes" in figure._suptitle.get_text()
    assert plots.overlapping_texts(figure) == []
    own = side_by_side.latent_grid_figure(panels, labels, [str(i) for i in range(10)], shared=False)
    own_axes = [axis for axis in own.axes if axis.get_title()]
    assert len({axis.get_xlim() for axis in own_axes}) == 3 and "its own axes" in own._suptitle.get_text()
    assert plots.overlapping_texts(own) == []


def test_the_overlap_check_finds_titles_drawn_over_each_other():
    crowded, axes = plots.plt.subplots(1, 2, figsize=(3, 2))
    for each in axes:
        each.set_title("a title far too long for a panel this narrow")
    found = plots.overlapping_texts(crowded)
    assert found and found[0][0].startswith("a title far too long")
    roomy, axes = plots.plt.subplots(1, 2, figsize=(12, 3))
    for each in axes:
        each.set_title("a short title")
    assert plots.overlapping_texts(roomy) == []


def test_sample_and_aggregate_posterior_grids_read_cleanly():
    panels = [Panel(r, 0, f"model={m}", torch.rand(100, 1, 28, 28)) for r, m in enumerate(["ae", "vae"])]
    assert plots.overlapping_texts(side_by_side.sample_grid_figure(panels)) == []
    maps = [
        Panel(
            0, c, f"loss={name}", aggregate_posterior_map(torch.randn(400, 2) * s, torch.full((400, 2), -1.0))
        )
        for c, (name, s) in enumerate([("kl", 0.01), ("elbo", 1.0)])
    ]
    assert plots.overlapping_texts(side_by_side.density_grid_figure(maps)) == []


def test_the_aggregate_posterior_map_finds_no_holes_where_q_is_the_prior_and_all_where_it_is_far():
    at_prior = aggregate_posterior_map(torch.zeros(2000, 2), torch.zeros(2000, 2))
    assert at_prior["prior_mass_in_holes"] == pytest.approx(0.05, abs=0.02)  # the quantile itself
    far = aggregate_posterior_map(
        torch.full((500, 2), 40.0) + torch.randn(500, 2), torch.full((500, 2), -4.0)
    )
    assert far["prior_mass_in_holes"] == pytest.approx(far["prior_mass_on_grid"], abs=1e-6)
    with pytest.raises(ValueError, match="2-d latent"):
        aggregate_posterior_map(torch.zeros(10, 3), None)
