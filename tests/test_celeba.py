"""CelebA from a folder holding only part of it: fakes in the real formats, and the real faces of
../shared/data/celeba where they are (a few hundred of them, a few training steps)."""

import logging
import shutil
import subprocess

import matplotlib.image
import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import REPO, build_run, trust_fake_celeba, write_fake_celeba
from vae_lab.config import CONF_DIR, register_schemas
from vae_lab.data import load_celeba, to_float
from vae_lab.errors import DataError
from vae_lab.evaluation import inference
from vae_lab.losses import BernoulliLikelihood
from vae_lab.training.loop import TrainStep

SHARED_CELEBA = REPO.parent / "shared" / "data" / "celeba"


def face_config(*overrides: str):
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["experiment=celeba_vae", *overrides])


def partial_celeba(tmp_path, monkeypatch, partition=(24, 4, 8), remove=()):
    """A fake CelebA folder trusted by its md5s, then with the named images deleted."""
    root = write_fake_celeba(tmp_path / "data", partition=partition)
    trust_fake_celeba(monkeypatch, root)
    for name in remove:
        (root / "celeba" / "img_align_celeba" / name).unlink()
    return root


def test_a_partial_folder_trains_on_the_faces_present_and_says_how_many_are_missing(
    tmp_path, monkeypatch, caplog
):
    # files 1-24 train, 25-28 valid, 29-36 test; delete 5 train faces, 1 valid and 3 test
    gone = [f"{n:06d}.jpg" for n in (2, 3, 10, 17, 24, 25, 29, 30, 36)]
    root = partial_celeba(tmp_path, monkeypatch, remove=gone)
    with caplog.at_level(logging.INFO, logger="vae_lab.data"):
        data = load_celeba(str(root), download=False)
    assert data.train_images.shape == (19, 3, 64, 64) and data.test_images.shape == (5, 3, 64, 64)
    # the labels follow the faces present: the fake marks odd-numbered files (even rows) Smiling
    kept = [n for n in range(1, 25) if f"{n:06d}.jpg" not in gone]
    assert data.train_labels.tolist() == [int(n % 2 == 1) for n in kept]
    line = next(r.getMessage() for r in caplog.records if "present" in r.getMessage())
    assert "train 19 of 24 present (5 missing)" in line
    assert "valid 3 of 4 present (1 missing)" in line and "test 5 of 8 present (3 missing)" in line
    assert len(load_celeba(str(root), download=False, limit=7).train_images) == 7  # the first 7 present


def test_require_all_images_refuses_a_partial_folder(tmp_path, monkeypatch):
    root = partial_celeba(tmp_path, monkeypatch, remove=["000005.jpg"])
    with pytest.raises(DataError, match=r"require_all_images=true.*lacks 1 of the 36 faces.*train 23 of 24"):
        load_celeba(str(root), download=False, require_all_images=True)
    complete = partial_celeba(tmp_path / "whole", monkeypatch)
    assert len(load_celeba(str(complete), download=False, require_all_images=True).train_images) == 24


def test_a_split_without_any_face_gives_one_message_naming_it(tmp_path, monkeypatch):
    root = partial_celeba(tmp_path, monkeypatch, partition=(6, 2, 3), remove=["000010.jpg", "000011.jpg"])
    (root / "celeba" / "img_align_celeba" / "000009.jpg").unlink()
    with pytest.raises(DataError, match=r"no face of CelebA's test split \(3 listed"):
        load_celeba(str(root), download=False)


def test_only_the_attribute_and_partition_files_are_needed_and_their_md5_is_checked(tmp_path, monkeypatch):
    root = partial_celeba(tmp_path, monkeypatch)
    folder = root / "celeba"
    for name in ("list_bbox_celeba.txt", "list_landmarks_align_celeba.txt", "identity_CelebA.txt"):
        (folder / name).unlink()
    assert len(load_celeba(str(root), download=False).test_images) == 8  # no bounding boxes, no landmarks
    with (folder / "list_eval_partition.txt").open("a") as file:
        file.write("999999.jpg 0\n")  # a changed partition file no longer has the official md5
    with pytest.raises(DataError) as caught:
        load_celeba(str(root), download=False)
    message = str(caught.value)
    assert "list_eval_partition.txt's md5 differs from the official" in message
    assert "list_bbox_celeba.txt" in message and "(optional)  <- missing" in message
    (folder / "list_attr_celeba.txt").unlink()
    with pytest.raises(DataError, match="list_attr_celeba.txt is missing"):
        load_celeba(str(root), download=False)


def test_a_read_only_data_folder_still_loads_without_its_cache(tmp_path, monkeypatch, caplog):
    root = partial_celeba(tmp_path, monkeypatch)
    folder = root / "celeba"
    folder.chmod(0o555)  # vae_lab_cache/ cannot be made
    try:
        with caplog.at_level(logging.WARNING, logger="vae_lab.data"):
            data = load_celeba(str(root), download=False)
    finally:
        folder.chmod(0o755)
    if not any("could not be cached" in r.getMessage() for r in caplog.records):
        pytest.skip("this user can write into a read-only folder (root)")
    assert len(data.train_images) == 24 and not (folder / "vae_lab_cache").exists()


def test_git_ignores_celeba_images_and_caches_wherever_they_sit(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    # the repository's .gitignore in a fresh repository: the checkout's own data/ may hold links
    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    paths = [
        "data/celeba/img_align_celeba/000001.jpg",
        "data/celeba/vae_lab_cache/train_crop148_64px.pt",
        "elsewhere/celeba/img_align_celeba/000001.jpg",
        "elsewhere/celeba/vae_lab_cache/test_crop148_64px.pt",
        "docs/img_align_celeba/000001.jpg",
    ]
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.stdout.split() == paths, result.stderr
    kept = ["conf/data/celeba.yaml", "docs/faces/samples.png", "vae_lab/data/celeba.py"]
    result = subprocess.run(["git", "check-ignore", "--no-index", *kept], cwd=tmp_path, capture_output=True)
    assert result.returncode == 1 and result.stdout == b""  # none of them ignored


@pytest.mark.skipif(
    not (SHARED_CELEBA / "img_align_celeba").is_dir(),
    reason=f"the real CelebA faces are not in {SHARED_CELEBA}",
)
def test_a_few_steps_on_real_faces_lower_the_loss(tmp_path):
    folder = tmp_path / "data" / "celeba"  # links to the real files: the cache is written here, not there
    folder.mkdir(parents=True)
    for item in ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt"):
        (folder / item).symlink_to(SHARED_CELEBA / item)
    data = load_celeba(str(tmp_path / "data"), download=False, limit=256)
    assert data.train_images.shape == (256, 3, 64, 64) and len(data.test_images) > 1000
    assert 0.2 < data.train_labels.double().mean() < 0.8  # Smiling: about half of the faces
    torch.manual_seed(0)
    cfg = face_config("model.latent_dim=32")
    step = TrainStep.sped_up(*build_run(cfg), cfg.speed)
    step.train()
    images = to_float(data.train_images)
    losses = [step(images[i * 32 % 256 : i * 32 % 256 + 32]).total.item() for i in range(24)]
    floor = BernoulliLikelihood().floor_nats(data.train_images)  # BCE of a face against itself
    first, last = (sum(losses[part]) / 4 - floor for part in (slice(0, 4), slice(-4, None)))
    assert last < 0.8 * first, (floor, losses)  # nats above the floor: a fifth of them gone in 24 steps


def test_the_attribute_vector_is_the_difference_of_the_mean_codes():
    codes = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 3.0], [6.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    assert torch.equal(inference.attribute_vector(codes, labels), torch.tensor([4.0, 3.0]))


def test_a_face_run_draws_the_attribute_shift_of_its_faces_without_the_attribute(tmp_path, monkeypatch):
    from tests.test_datasets import train_in_process

    root = partial_celeba(tmp_path, monkeypatch)
    train_in_process(tmp_path / "run", "experiment=celeba_vae", f"data.root={root}", "data.download=false")
    shift = matplotlib.image.imread(tmp_path / "run" / "attribute_shift.png")
    # 4 of the 8 fake test faces lack Smiling: 4 rows of 7 strengths, each 64 pixels, in a wider figure
    assert shift.shape[1] > shift.shape[0] > 0
    vector_faces = len(inference.ATTRIBUTE_STRENGTHS) * 4
    model, _, _ = build_run(face_config("model.latent_dim=4"))
    faces = torch.zeros(4, 3, 64, 64, dtype=torch.uint8)
    images = inference.attribute_shifts(model, faces, torch.zeros(model.latent_dim))
    assert images.shape == (vector_faces, 3, 64, 64)
    assert torch.allclose(images[0], images[3])  # a zero vector: every strength decodes the same code
