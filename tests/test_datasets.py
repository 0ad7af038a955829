"""Data sets beyond MNIST (Fashion-MNIST, CelebA, an image folder), colour figures, the Gaussian
likelihood and the TensorBoard logger, on tiny fakes in the real on-disk formats: nothing downloads."""

import json
import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torchvision import datasets

from tests.conftest import (
    CELEBA_ATTRIBUTES,
    FAST_EVALUATION,
    compose_run,
    run_in_process,
    trust_fake_celeba,
    write_fake_celeba,
    write_fake_fashion_mnist,
    write_image_folder,
)
from vae_lab.config import check_config
from vae_lab.data import celeba as celeba_module
from vae_lab.data import decoding, load_celeba, load_fashion_mnist, load_image_folder
from vae_lab.data import image_folder as image_folder_module
from vae_lab.errors import ConfigError, DataError
from vae_lab.evaluate import evaluate_folder
from vae_lab.figures import plots
from vae_lab.legacy_configs import upgrade_legacy_loss, upgrade_legacy_overrides
from vae_lab.losses import ELBO, GaussianLikelihood, Reconstruction, gaussian_nats_per_image
from vae_lab.models import ModelOutput
from vae_lab.training.loggers import NoLogger, TensorBoardLogger, finite_numbers

# ---------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_reads_idx_files_and_names_its_classes(tmp_path):
    root = write_fake_fashion_mnist(tmp_path / "data", train_count=40, test_count=20)
    data = load_fashion_mnist(str(root), limit=30, download=False)
    assert data.train_images.shape == (30, 1, 28, 28) and data.test_images.shape == (20, 1, 28, 28)
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert data.class_names == list(datasets.FashionMNIST.classes)


def test_missing_fashion_mnist_names_its_folder(tmp_path):
    with pytest.raises(DataError) as caught:
        load_fashion_mnist(str(tmp_path / "empty"), download=False)
    assert str(tmp_path / "empty" / "FashionMNIST" / "raw") in str(caught.value)
    assert "fashion-mnist" in str(caught.value) and "VAE_LAB_DATA" in str(caught.value)


# ---------------------------------------------------------------- CelebA


@pytest.fixture
def celeba_root(tmp_path, monkeypatch):
    root = write_fake_celeba(tmp_path / "data")
    trust_fake_celeba(monkeypatch, root)
    return root


def test_celeba_faces_are_cropped_resized_rgb_with_attribute_labels(celeba_root):
    data = load_celeba(str(celeba_root), download=False, attribute="Smiling")
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (24, 3, 64, 64)
    assert data.test_images.shape == (8, 3, 64, 64)  # the test partition (code 2); valid (1) is unused
    assert data.class_names == ["not Smiling", "Smiling"]
    assert data.train_labels.tolist() == [1, 0] * 12  # the fake marks every even-numbered face Smiling
    centre = data.train_images[:, :, 32, 32].float()  # the fake's centre square: red if smiling, else blue
    assert (centre[data.train_labels == 1, 0] > 150).all() and (centre[data.train_labels == 0, 2] > 150).all()
    assert data.train_images[:, :, 0].float().mean() < 100  # the white band above the crop is cut away
    male = load_celeba(str(celeba_root), download=False, attribute="Male", limit=10)
    column = CELEBA_ATTRIBUTES.index("Male") + 1
    rows = (celeba_root / "celeba" / "list_attr_celeba.txt").read_text().splitlines()[2:12]
    assert male.train_labels.tolist() == [int(int(row.split()[column]) == 1) for row in rows]
    assert male.class_names == ["not Male", "Male"] and len(male.train_images) == 10


def test_celeba_cache_is_read_back_and_rebuilt_for_another_size(celeba_root, monkeypatch):
    first = load_celeba(str(celeba_root), download=False)
    caches = sorted(p.name for p in (celeba_root / "celeba" / "vae_lab_cache").iterdir())
    assert caches == ["test_crop148_64px.pt", "train_crop148_64px.pt"]
    decoded = []
    original = decoding.decode_images
    monkeypatch.setattr(celeba_module, "decode_images", lambda *a: decoded.append(a) or original(*a))
    second = load_celeba(str(celeba_root), download=False)
    assert decoded == [] and torch.equal(first.train_images, second.train_images)
    smaller = load_celeba(str(celeba_root), download=False, image_size=32, crop_size=120)
    assert len(decoded) == 2 and smaller.train_images.shape == (24, 3, 32, 32)
    assert (celeba_root / "celeba" / "vae_lab_cache" / "train_crop120_32px.pt").is_file()


def test_an_unknown_attribute_lists_the_real_ones(celeba_root):
    with pytest.raises(DataError, match="data.attribute='Smiles'.*Smiling.*Wearing_Hat"):
        load_celeba(str(celeba_root), download=False, attribute="Smiles")


def test_celeba_files_failing_torchvisions_checksums_give_one_message_with_the_checksums(tmp_path):
    root = write_fake_celeba(tmp_path / "data", partition=(2, 0, 1))  # the real md5 list: fakes never match
    with pytest.raises(DataError) as caught:
        load_celeba(str(root), download=False)
    message = str(caught.value)
    for _, md5, name in datasets.CelebA.file_list:
        assert f"{name}  md5 {md5}" in message
    assert "its md5 differs" in message and "VAE_LAB_DATA" in message and str(root / "celeba") in message


def test_missing_celeba_with_a_failing_download_says_how_to_get_it_by_hand(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise RuntimeError("network disabled in tests")

    monkeypatch.setattr("torchvision.datasets.celeba.download_file_from_google_drive", no_network)
    with pytest.raises(DataError) as caught:
        load_celeba(str(tmp_path / "nothing"), download=True)
    message = str(caught.value)
    assert "network disabled in tests" in message and "<- missing" in message
    assert "img_align_celeba.zip" in message and "mmlab.ie.cuhk.edu.hk" in message


# ---------------------------------------------------------------- an image folder


def test_an_image_folder_gives_square_images_labelled_by_sub_folder(tmp_path):
    folder = write_image_folder(tmp_path / "images")
    data = load_image_folder(str(folder), root=str(tmp_path / "data"), image_size=32, test_share=0.25)
    assert data.class_names == ["circles", "squares", "stripes"]
    assert data.train_images.shape == (27, 3, 32, 32) and data.test_images.shape == (9, 3, 32, 32)
    assert data.test_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # a share of every class
    centre = data.train_images[:, :, 16, 16].float()  # each class is bright in its own channel
    assert (centre.argmax(1) == data.train_labels).all()
    grey = load_image_folder(str(folder), root=str(tmp_path / "data"), image_size=16, channels=1, limit=5)
    assert grey.train_images.shape == (5, 1, 16, 16)


def test_an_image_folder_cache_follows_its_files(tmp_path, monkeypatch):
    folder = write_image_folder(tmp_path / "images", classes=("a", "b"), per_class=4)
    root = str(tmp_path / "data")
    load_image_folder(str(folder), root=root, image_size=16)
    decoded = []
    original = decoding.decode_images
    monkeypatch.setattr(image_folder_module, "decode_images", lambda *a: decoded.append(a) or original(*a))
    load_image_folder(str(folder), root=root, image_size=16)
    assert decoded == []
    (folder / "b" / "000.png").unlink()
    again = load_image_folder(str(folder), root=root, image_size=16)
    assert len(decoded) == 1 and len(again.train_images) + len(again.test_images) == 7


def test_image_folder_mistakes_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="data.path is not set"):
        load_image_folder(None)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="one sub-folder per class"):
        load_image_folder(str(tmp_path / "flat"), root=str(tmp_path))
    broken = write_image_folder(tmp_path / "broken", classes=("a",), per_class=2)
    (broken / "a" / "001.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="001.png could not be read as an image"):
        load_image_folder(str(broken), root=str(tmp_path))


# ---------------------------------------------------------------- the Gaussian likelihood


def test_the_gaussian_likelihood_by_hand():
    # logits 0 -> mean 0.5; x = 1 on 4 pixels, variance 0.25: per pixel 0.25 / 0.5 + log(2 pi 0.25) / 2
    logits, images = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    expected = 4 * (0.5 + 0.5 * math.log(math.pi / 2))
    assert gaussian_nats_per_image(logits, images, 0.25).item() == pytest.approx(expected)
    loss = Reconstruction(likelihood=GaussianLikelihood(variance=0.25))
    parts = loss(ModelOutput(recon_logits=logits, code=torch.zeros(1, 2)), images)
    assert parts.recon.item() == pytest.approx(expected) and parts.total.item() == pytest.approx(expected)
    assert repr(ELBO()) == "ELBO(recon_weight=1.0, kl_weight=1.0)"  # the default is unchanged
    with pytest.raises(ConfigError, match="loss.likelihood.variance=0.0 is not allowed"):
        check_config(compose_run("loss/likelihood=gaussian", "loss.likelihood.variance=0"))
    with pytest.raises(ConfigError, match="loss.likelihood='laplace'"):
        upgrade_legacy_loss({"_target_": "vae_lab.losses.ELBO", "likelihood": "laplace"})


def test_the_first_spelling_of_the_likelihood_still_reaches_the_same_config():
    """loss.likelihood=gaussian loss.gaussian_variance=V, typed before likelihoods had a _target_."""
    assert upgrade_legacy_overrides(
        ["loss.likelihood=gaussian", "loss.gaussian_variance=0.05", "seed=1"]
    ) == [
        "loss/likelihood=gaussian",
        "loss.likelihood.variance=0.05",
        "seed=1",
    ]
    old_run = {
        "_target_": "vae_lab.losses.ELBO",
        "recon_weight": 1.0,
        "likelihood": "gaussian",
        "gaussian_variance": 0.05,
    }
    today = OmegaConf.to_container(
        compose_run("loss/likelihood=gaussian", "loss.likelihood.variance=0.05").loss
    )
    assert upgrade_legacy_loss(old_run) == {
        key: today[key] for key in ("_target_", "recon_weight", "likelihood")
    }


# ---------------------------------------------------------------- colour figures


def test_figures_draw_colour_images_in_colour(tmp_path):
    red = torch.zeros(4, 3, 8, 8)
    red[:, 0] = 1
    tiled = plots.tile(red, 2, 2)
    assert tiled.shape == (16, 16, 3) and (tiled[..., 0] == 1).all() and (tiled[..., 1:] == 0).all()
    for path in (
        plots.plot_reconstructions(red, red, tmp_path / "reconstructions.png"),
        plots.plot_image_grid(red, tmp_path / "samples.png", cols=2),
        plots.plot_manifold(red, np.array([-1.0, 1.0]), tmp_path / "manifold.png", title="grid"),
    ):
        pixels = matplotlib.image.imread(path)[..., :3]
        redness = (pixels[..., 0] > 0.9) & (pixels[..., 1] < 0.1) & (pixels[..., 2] < 0.1)
        assert redness.mean() > 0.05, path.name
    names = [f"class {i}" for i in range(15)]  # more classes than tab10 has colours
    assert len({tuple(c) for c in plots.class_colours(15)}) == 15
    plots.plot_latent_scatter(torch.randn(60, 2), torch.arange(60) % 15, tmp_path / "scatter.png", names)


# ---------------------------------------------------------------- loggers


def test_tensorboard_logger_writes_scalars_images_and_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    figure = plots.plot_image_grid(torch.rand(4, 3, 8, 8), tmp_path / "samples.png", cols=2)
    logger = TensorBoardLogger(run_dir=tmp_path)
    for epoch in (1, 2):
        parts = {"total": 10.0 / epoch, "recon": 8.0, "kl": None}
        logger.log_epoch(
            {"epoch": epoch, "train": parts, "test": parts, "train_s": 1.5, "train_images_per_s": 9}
        )
    logger.log_figures([figure], step=2)
    logger.log_metrics(
        {"iwae": {"nll_k10": 90.5}, "latent": {"kl_per_dim": [0.5, 1.5]}, "prior_samples": None}
    )
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/total")] == [(1, 10.0), (2, 5.0)]
    assert "train/kl" not in events.Tags()["scalars"]  # None (not applicable) is left out, never 0
    assert events.Scalars("metrics/latent/kl_per_dim/1")[0].value == 1.5
    assert [image.step for image in events.Images("samples")] == [2]
    NoLogger(tmp_path).log_epoch({"epoch": 1})  # the default does nothing and needs nothing


def test_tensorboard_missing_is_a_config_error_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"pip install -c constraints.txt -e '.\[tensorboard\]'"):
        TensorBoardLogger(run_dir=tmp_path)


def test_flattened_metrics_keep_numbers_only():
    tree = {"a": {"b": 1, "c": None, "d": "text", "e": True}, "f": [2.0, float("nan")]}
    assert dict(finite_numbers(tree)) == {"a/b": 1.0, "f/0": 2.0}


# ---------------------------------------------------------------- a few training steps on each


TINY_RUN = [
    "trainer.epochs=1",
    "trainer.batch_size=16",
    "trainer.eval_batch_size=50",
    "trainer.progress=false",
    "device=cpu",
    "model.latent_dim=4",
    *FAST_EVALUATION,
    "evaluation.prior_samples=50",
    "evaluation.iwae_images=8",
]


def train_in_process(run_dir: Path, *overrides: str) -> dict:
    """Train through vae_lab.train.run, in this process (so that a test's monkeypatch reaches the loader)."""
    summary = run_in_process(run_dir, *TINY_RUN, *overrides)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    for name in ("reconstructions.png", "latent_scatter.png", "samples.png", "interpolation.png"):
        assert (run_dir / name).is_file(), name
    return summary


def test_a_few_training_steps_on_celeba(celeba_root, tmp_path):
    summary = train_in_process(
        tmp_path / "run", "experiment=celeba_vae", f"data.root={celeba_root}", "data.download=false"
    )
    assert summary["train_images"] == 24 and summary["test_images"] == 8
    assert (
        len(summary["metrics"]["prior_samples"]["coverage_per_class"]) == 2
    )  # the classifier judges Smiling
    assert summary["metrics"]["likelihood"]["bce_floor"] > 0  # BCE on colour pixels, as the article does
    assert matplotlib.image.imread(tmp_path / "run" / "samples.png").shape[-1] in (3, 4)


def test_a_few_training_steps_on_fashion_mnist(tmp_path):
    root = write_fake_fashion_mnist(tmp_path / "data", train_count=64, test_count=30)
    summary = train_in_process(
        tmp_path / "run", "data=fashion_mnist", f"data.root={root}", "data.download=false"
    )
    assert summary["train_images"] == 64 and summary["metrics"]["prior_samples"] is not None


def test_a_few_training_steps_on_an_image_folder_with_the_gaussian_likelihood(tmp_path):
    folder = write_image_folder(tmp_path / "images", per_class=8)
    overrides = [
        "data=image_folder",
        f"data.path={folder}",
        f"data.root={tmp_path / 'data'}",
        "data.image_size=16",
        "model=vae_celeba",
        "loss/likelihood=gaussian",
        "loss.likelihood.variance=0.05",
    ]
    run_dir = tmp_path / "run"
    trained = train_in_process(run_dir, *overrides)
    floor = 0.5 * 3 * 16 * 16 * math.log(2 * math.pi * 0.05)  # -log N(x; x, 0.05) over 16x16x3 pixels
    assert floor < trained["test"]["recon"] < floor + 3 * 16 * 16 / (2 * 0.05)  # squared errors in [0, 1]
    # the evaluation reads the run's loss from its saved config (as Hydra writes it) for p(x|z)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(compose_run(*TINY_RUN, *overrides), run_dir / ".hydra" / "config.yaml")
    summary = evaluate_folder(run_dir)
    likelihood = summary["metrics"]["likelihood"]
    assert likelihood["bce_floor"] is None and likelihood["gaussian_variance"] == 0.05
    assert likelihood["gaussian_floor"] == pytest.approx(floor)
    assert likelihood["recon_above_floor"] == pytest.approx(likelihood["recon"] - floor)
    assert (
        summary["metrics"]["iwae"]["nll_k10"] < likelihood["negative_elbo"] + 1e-3
    )  # IWAE <= ELBO, same p(x|z)


def test_one_class_skips_the_classifier_metrics_instead_of_crashing(tmp_path):
    folder = write_image_folder(tmp_path / "images", classes=("only",), per_class=20)
    summary = train_in_process(
        tmp_path / "run",
        "data=image_folder",
        f"data.path={folder}",
        f"data.root={tmp_path / 'data'}",
        "data.image_size=16",
        "model=vae_celeba",
    )
    assert summary["metrics"]["prior_samples"] is None and summary["metrics"]["classifier"] is None
    assert not (tmp_path / "run" / "class_histogram.png").exists()
