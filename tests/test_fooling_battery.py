"""The fooling battery: every sample metric vae_lab's tables show, scored on real MNIST test digits and on
image sets that must score worse (vae_lab/evaluation/fooling_battery.py), in the features of a digit
classifier trained on real digits as vae_lab trains it (fewer epochs and images, for time)."""

import pytest

from tests.conftest import SHARED_MNIST
from vae_lab.compare import HEADLINE_METRICS
from vae_lab.data import MNIST_FILES, load_mnist
from vae_lab.evaluation.classifier import train_classifier
from vae_lab.evaluation.fooling_battery import COLLAPSE_SETS, REALISM_FOOLERS, battery_scores

pytestmark = pytest.mark.skipif(
    not all((SHARED_MNIST / f"{name}.gz").is_file() for name in MNIST_FILES),
    reason=f"the official MNIST .gz files are not in {SHARED_MNIST}",
)
HIGHER_IS_BETTER = {
    "precision": True,
    "coverage": True,
    "coverage_lowest_class": True,
    "frechet_distance": False,
}
# the sample metrics of compare's table (metrics_prior_samples_<name>)
TABLE_METRICS = [
    key.removeprefix("metrics_prior_samples_")
    for key in HEADLINE_METRICS
    if key.startswith("metrics_prior_samples_")
]


@pytest.fixture(scope="module")
def trained(real_mnist_root):
    data = load_mnist(str(real_mnist_root), limit=6000)
    classifier, accuracy = train_classifier(data, epochs=2, batch_size=128, lr=2e-3, seed=0, progress=False)
    return data, classifier, accuracy


@pytest.fixture(scope="module")
def scores(trained):
    data, classifier, _ = trained
    return battery_scores(classifier, data)


def test_the_digit_classifier_learns_real_digits(trained):
    assert trained[2] > 0.95  # on the whole test split, from 6,000 training images and 2 epochs


def better(metric: str, a: float, b: float) -> bool:
    return a > b if HIGHER_IS_BETTER[metric] else a < b


def test_the_tables_show_only_metrics_the_battery_judges():
    assert set(TABLE_METRICS) == {"coverage", "coverage_lowest_class", "frechet_distance"}


@pytest.mark.parametrize("fooler", REALISM_FOOLERS + COLLAPSE_SETS)
def test_real_digits_beat_every_fooler_on_every_metric_of_the_tables(scores, fooler):
    real = scores["real digits"]
    for metric in TABLE_METRICS:
        assert better(metric, real[metric], scores[fooler][metric]), (
            metric,
            real[metric],
            scores[fooler][metric],
        )


@pytest.mark.parametrize("fooler", REALISM_FOOLERS)
def test_precision_scores_every_realism_fooler_below_real_digits(scores, fooler):
    # precision measures how real each sample looks, not how varied the set is: collapse sets of real
    # digits are real-looking, and the diversity metrics below are what catch them
    assert scores[fooler]["precision"] < scores["real digits"]["precision"]


@pytest.mark.parametrize("collapse", COLLAPSE_SETS)
def test_the_diversity_metrics_score_collapse_far_below_real_digits(scores, collapse):
    real = scores["real digits"]
    assert scores[collapse]["coverage"] < 0.1 * real["coverage"]
    assert scores[collapse]["coverage_lowest_class"] < 0.1 * real["coverage_lowest_class"]
    assert scores[collapse]["frechet_distance"] > 5 * real["frechet_distance"]
