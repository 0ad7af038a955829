"""A short training run on the real MNIST files from ../shared/data (skipped only when they are absent)."""

import json
import shutil
import subprocess
import time

import pytest

from tests import warm_start
from tests.conftest import SHARED_MNIST, python, wait_until
from vae_lab.data import MNIST_FILES, load_mnist
from vae_lab.errors import DataError

pytestmark = pytest.mark.skipif(
    not all((SHARED_MNIST / f"{name}.gz").is_file() for name in MNIST_FILES),
    reason=f"the official MNIST .gz files are not in {SHARED_MNIST}",
)


@pytest.fixture(scope="module")
def mnist_root(real_mnist_root):
    return real_mnist_root


def test_the_official_files_load_with_their_known_sizes(mnist_root):
    data = load_mnist(str(mnist_root), download=True)  # md5 sums match: nothing is downloaded
    assert data.train_images.shape == (60000, 1, 28, 28) and data.test_images.shape == (10000, 1, 28, 28)
    assert data.train_labels.bincount().tolist()[:2] == [5923, 6742]


def test_about_a_hundred_steps_of_the_article_vae_lower_the_loss(mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    # 2 epochs of 6,144 images at batch 128: 96 steps, and the whole test split measured after each
    result = warm_start.run(
        [
            python(),
            "-m",
            "vae_lab.train",
            f"data.root={mnist_root}",
            f"hydra.run.dir={run_dir}",
            "data.limit=6144",
            "trainer.epochs=2",
            "trainer.progress=false",
            "trainer.figures=false",  # nor the figures of 10,000 test codes
            "evaluation.enabled=false",  # the metrics have tests of their own
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tests = [line["test"]["total"] for line in lines]
    assert len(tests) == 2 and tests[1] < tests[0] - 10, tests
    # an untrained decoder gives about 784 * log 2 = 543 nats; a hundred steps reach far below
    assert tests[1] < 250, tests


@pytest.mark.parametrize("damage", ["truncated", "one byte changed"])
def test_a_damaged_official_archive_is_refused_by_its_checksum(mnist_root, tmp_path, damage):
    root = tmp_path / "data"
    shutil.copytree(mnist_root, root)  # the archives and the files torchvision unpacked from them
    archive = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(archive.read_bytes())
    if damage == "truncated":
        content = content[: len(content) // 2]
    else:
        content[100] ^= 0xFF
    archive.write_bytes(bytes(content))
    expected = r"t10k-labels-idx1-ubyte.gz \(md5 [0-9a-f]{32}.*expected md5 ec29112d"  # torchvision's sum
    with pytest.raises(DataError, match=expected):
        load_mnist(str(root), download=False)


def test_a_loader_waits_while_another_process_unpacks_the_archives(tmp_path):
    from vae_lab.data.mnist import unpacking_lock

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(SHARED_MNIST / f"{name}.gz", raw)
    # torchvision unpacks in place: a sweep's job or a bench variant that read meanwhile read half a file
    script = (
        "from vae_lab.data import load_mnist; print('loading', flush=True); "
        f"print(len(load_mnist({str(tmp_path / 'data')!r}).train_images))"
    )
    with unpacking_lock(raw):  # this process is unpacking
        process = warm_start.Popen([python(), "-c", script], stdout=subprocess.PIPE, text=True)
        wait_until(lambda: process.output()[0] == "loading\n", process, "the loader started")
        time.sleep(2)  # loading takes well under a second here
        assert process.poll() is None  # waiting for the lock
    assert process.communicate(timeout=120)[0] == "loading\n60000\n" and process.returncode == 0


def test_a_file_left_partly_unpacked_is_unpacked_again_from_its_archive(mnist_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(mnist_root, root)
    load_mnist(str(root))  # unpacks the archives, if no test before did
    unpacked = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    unpacked.write_bytes(unpacked.read_bytes()[:4000])  # as a process killed while unpacking it leaves it
    assert len(load_mnist(str(root), download=True).test_labels) == 10000
    assert unpacked.stat().st_size == 10008
