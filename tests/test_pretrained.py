"""The trained models that ship with vae_lab (vae_lab/pretrained): loadable with no data and no
training, through vae_lab.load_pretrained and torch.hub, each reproducing its recorded test loss."""

import json
import sys

import pytest
import torch

from tests import warm_start
from tests.conftest import REPO, SHARED_MNIST
from vae_lab.errors import VaeLabError
from vae_lab.pretrained import FOLDER, load_pretrained, names, record

SHIPPED = ["ae_16d", "article_ae", "article_vae", "vae_16d"]


def test_the_four_models_ship_each_under_a_megabyte_with_their_config_summary_and_record():
    assert names() == SHIPPED
    for name in SHIPPED:
        files = {path.name: path.stat().st_size for path in (FOLDER / name).iterdir()}
        assert {"weights.pt", "config.yaml", "summary.json", "record.json", "metrics.jsonl"} <= set(files)
        assert files["weights.pt"] < 1_000_000, name
        made = record(name)
        assert made["trained"]["commit"] and made["trained"]["command"] and made["packed"]["command"]


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_loads_as_load_run_gives_a_run(name):
    run = load_pretrained(name)
    assert not run.model.training and next(run.model.parameters()).dtype == torch.float32
    latent = 2 if name.startswith("article") else 16
    assert run.model.latent_dim == latent == run.config.model.latent_dim
    assert run.model.is_variational == ("vae" in name)
    assert run.summary["status"] == "completed" and len(run.metrics) == run.summary["epochs"]
    images = run.model.decode(torch.zeros(3, latent))
    assert images.shape == (3, 1, 28, 28)


def test_a_loaded_model_holds_its_convolutions_in_nhwc_on_the_cpu_and_gives_the_plain_layouts_outputs():
    import copy

    from vae_lab.runs import ready_to_evaluate

    run = load_pretrained("article_vae")
    convolutions = [m.weight for m in run.model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert len(convolutions) == 8
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    assert not all(w.is_contiguous() for w in convolutions)
    nchw = copy.deepcopy(run.model).to(memory_format=torch.contiguous_format)
    assert all(
        m.weight.is_contiguous() for m in nchw.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)
    )
    images = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(run.model.encode(images).mean, nchw.encode(images).mean)
        codes = torch.randn(8, 2)
        torch.testing.assert_close(run.model.decode(codes), nchw.decode(codes))
    assert ready_to_evaluate(nchw, "meta") is nchw and not nchw.training  # elsewhere the layout is left alone
    assert all(
        m.weight.is_contiguous() for m in nchw.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)
    )


def test_no_name_or_a_wrong_one_lists_the_names():
    for wrong in (None, "article_vea"):
        with pytest.raises(
            VaeLabError, match="the shipped models are: ae_16d, article_ae, article_vae, vae_16d"
        ):
            load_pretrained(wrong)


def test_torch_hub_loads_a_shipped_model_from_a_clone():
    model = torch.hub.load(str(REPO), "article_vae", source="local")
    assert not model.training and model.latent_dim == 2


def test_a_fresh_process_reads_the_summary_with_no_data_and_no_training(tmp_path):
    code = "import vae_lab; r = vae_lab.load_pretrained('article_vae'); print(r.summary['test'])"
    result = warm_start.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "'total'" in result.stdout and not list(tmp_path.iterdir())  # nothing downloaded or written


@pytest.fixture(scope="module")
def mnist_test_images(real_mnist_root) -> torch.Tensor:
    """The real MNIST test split, whole, read once for the four models."""
    from vae_lab.data import load_mnist

    return load_mnist(str(real_mnist_root), limit=64).test_images


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"the real MNIST files are not in {SHARED_MNIST}")
@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_model_reproduces_its_recorded_test_loss_on_mnist(name, mnist_test_images):
    from hydra.utils import instantiate

    from vae_lab.evaluation.inference import evaluate_loss

    run = load_pretrained(name)
    assert len(mnist_test_images) == 10_000
    loss = instantiate(run.config.loss)
    test = evaluate_loss(
        run.model, loss, mnist_test_images, run.config.trainer.eval_batch_size, run.config.seed
    )
    recorded = json.loads((FOLDER / name / "summary.json").read_text())["shipped"]["test"]
    for part in ("total", "recon"):
        assert test[part] == pytest.approx(recorded[part], rel=1e-4)
