import gzip
import shutil
import subprocess

import pytest
import torch

from tests.conftest import fake_digits, python, write_fake_mnist
from vae_lab.data import in_order, load_mnist, shuffled_batches, to_float
from vae_lab.errors import DataError


def test_mnist_loads_as_uint8_tensors(fake_mnist_root):
    data = load_mnist(str(fake_mnist_root), download=False)
    assert data.train_images.dtype == torch.uint8 and data.train_images.shape == (256, 1, 28, 28)
    assert data.test_images.shape == (64, 1, 28, 28)
    expected_images, expected_labels = fake_digits(256, seed=0)
    assert torch.equal(data.train_images[:, 0], torch.from_numpy(expected_images))
    assert torch.equal(data.train_labels, torch.from_numpy(expected_labels).long())
    assert data.class_names == [str(d) for d in range(10)]


def test_limit_keeps_the_first_training_images_and_the_whole_test_split(fake_mnist_root):
    whole = load_mnist(str(fake_mnist_root), download=False)
    limited = load_mnist(str(fake_mnist_root), limit=100, download=False)
    assert torch.equal(limited.train_images, whole.train_images[:100])
    assert torch.equal(limited.test_images, whole.test_images)


def test_the_environment_variable_overrides_the_root(fake_mnist_root, monkeypatch):
    monkeypatch.setenv("VAE_LAB_DATA", str(fake_mnist_root))
    assert len(load_mnist("/nowhere", download=False).train_images) == 256


def test_gzipped_files_that_fail_the_official_checksums_are_refused(tmp_path, monkeypatch):
    source = write_fake_mnist(tmp_path / "plain") / "MNIST" / "raw"
    raw = tmp_path / "gz" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in source.iterdir():
        with open(path, "rb") as plain, gzip.open(raw / f"{path.name}.gz", "wb") as packed:
            shutil.copyfileobj(plain, packed)
    # md5 sums of fake files differ from the official ones, so torchvision would try to download:
    # make sure it never reaches the network in a test
    monkeypatch.setattr("torchvision.datasets.utils.download_url", _no_network)
    with pytest.raises(DataError):
        load_mnist(str(tmp_path / "gz"), download=True)


def _no_network(*args, **kwargs):
    raise RuntimeError("network disabled in tests")


def test_missing_data_names_the_folder_and_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as caught:
        load_mnist(str(tmp_path / "empty"), download=False)
    message = str(caught.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte.gz" in message and "VAE_LAB_DATA" in message


def test_a_truncated_file_is_a_data_error(fake_mnist_root):
    images = fake_mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:1000])
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_mnist(str(fake_mnist_root), download=False)


def test_batches_cover_every_image_once_per_epoch():
    generator = torch.Generator().manual_seed(0)
    batches = list(shuffled_batches(300, 128, generator, torch.device("cpu")))
    assert [len(b) for b in batches] == [128, 128, 44]
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(300))
    again = list(shuffled_batches(300, 128, generator, torch.device("cpu")))
    assert not torch.equal(torch.cat(batches), torch.cat(again))  # a fresh permutation each epoch
    assert [s.stop - s.start for s in in_order(300, 128)] == [128, 128, 44]


def test_to_float_maps_uint8_onto_the_unit_interval():
    pixels = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert torch.allclose(to_float(pixels), torch.tensor([0.0, 0.2, 1.0]))


def test_dynamic_binarisation_draws_training_pixels_afresh_and_fixes_the_test_split(fake_mnist_root):
    grey = load_mnist(str(fake_mnist_root), download=False)
    data = load_mnist(str(fake_mnist_root), download=False, binarize="dynamic")
    assert set(data.test_images.unique().tolist()) <= {0, 255}
    again = load_mnist(str(fake_mnist_root), download=False, binarize="dynamic")
    assert torch.equal(data.test_images, again.test_images)  # binarised once, with a fixed seed
    assert torch.equal(data.train_images, grey.train_images)  # kept grey: drawn per batch
    indices = torch.arange(256)
    first, second = data.train_batch(indices), data.train_batch(indices)
    assert set(first.unique().tolist()) <= {0.0, 1.0} and not torch.equal(first, second)
    draws = torch.stack([data.train_batch(indices) for _ in range(200)]).mean(0)
    assert torch.allclose(draws, grey.train_batch(indices), atol=0.15)  # E[Bernoulli(x)] = x
    assert torch.equal(grey.train_batch(indices), to_float(grey.train_images))


def test_unpacked_files_are_read_without_importing_torchvision(fake_mnist_root):
    # importing torchvision costs seconds (it pulls in torch._dynamo): every run and test process paid it
    script = (
        "import sys, vae_lab.train; from vae_lab.data import load_mnist; "
        f"data = load_mnist({str(fake_mnist_root)!r}); "
        "print(len(data.train_images), *(name in sys.modules for name in sys.argv[1:]))"
    )
    unwanted = ["torchvision", "scipy", "matplotlib"]
    result = subprocess.run([python(), "-c", script, *unwanted], capture_output=True, text=True, timeout=120)
    # matplotlib neither: the figures import it where they are drawn, which a data-parallel run's other
    # processes never do
    assert result.stdout.split() == ["256", "False", "False", "False"], result.stderr[-2000:]
