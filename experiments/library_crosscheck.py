"""vae_lab's hand-written metrics beside the well-kept libraries that do the same (docs/trackers.md):
torchmetrics (FID, KID, inception score, with a custom feature extractor), scikit-learn (kNN, PCA) and
prdc (density and coverage). Same inputs, both numbers, both times.

    pip install -c constraints.txt -e '.[dev,crosscheck]'
    python experiments/library_crosscheck.py            # a Markdown table on stdout

The inputs are seeded stand-ins of what the evaluation feeds each metric: 128-d classifier features of
2,000 real and 2,000 generated images (a tenth of the features dead, as ReLU features are, so the
covariances are singular), 10-class probabilities, 2-d codes with labels.
"""

import math
import time

import numpy as np
import torch

from vae_lab.evaluation import metrics, sample_quality


class Features(torch.nn.Module):
    """A 'feature extractor' that hands the features through: torchmetrics then computes on our features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    mix = torch.randn(128, 128, generator=generator) / math.sqrt(128)
    real = (torch.randn(2000, 128, generator=generator) @ mix).relu()
    fake = (torch.randn(2000, 128, generator=generator) @ mix * 1.2 + 0.1).relu()
    real[:, :13] = 0  # dead features: singular covariances
    fake[:, :13] = 0
    logits = torch.randn(2000, 10, generator=generator) * 3
    codes = torch.randn(12000, 2, generator=generator)
    labels = (codes[:, 0] > 0).long() * 5 + torch.randint(0, 5, (12000,), generator=generator)
    codes += torch.nn.functional.one_hot(labels, 10).float()[:, :2] * 2
    return real, fake, logits, codes, labels


def rows() -> list[tuple[str, str, str, str, str]]:
    """Give back one table row per metric: vae_lab's number and the library's, and their seconds."""
    real, fake, logits, codes, labels = inputs()
    return sample_rows(real, fake, logits) + code_rows(real, fake, codes, labels)


def sample_rows(real, fake, logits) -> list[tuple[str, str, str, str, str]]:
    """The Frechet distance, KID and inception score, beside torchmetrics'."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    table = []

    ours, our_s = timed(lambda: sample_quality.frechet_distance(real, fake))

    def torchmetrics_fid():
        fid = FrechetInceptionDistance(feature=Features(128), normalize=True)
        fid.update(real, real=True)
        fid.update(fake, real=False)
        return fid.compute().item()

    theirs, their_s = timed(torchmetrics_fid)
    table.append(("Frechet distance", f"{ours:.6f}", f"{theirs:.6f}", f"{our_s:.3f}", f"{their_s:.3f}"))

    def torchmetrics_kid():
        kid = KernelInceptionDistance(feature=Features(128), subsets=10, subset_size=1000, normalize=True)
        kid.update(real, real=True)
        kid.update(fake, real=False)
        return kid.compute()[0].item()

    theirs, their_s = timed(torchmetrics_kid)
    table.append(("kernel inception distance", "not computed", f"{theirs:.6f}", "", f"{their_s:.3f}"))

    # vae_lab does not compute the inception score: it fails the fooling battery (docs/metrics.md)
    def torchmetrics_is():
        score = InceptionScore(feature=Features(10), splits=1)  # normalize=False: no uint8 cast
        score.update(logits)  # it takes logits and applies the softmax itself
        return score.compute()[0].item()

    theirs, their_s = timed(torchmetrics_is)
    table.append(("inception score (1 split)", "not computed", f"{theirs:.6f}", "", f"{their_s:.3f}"))
    return table


def code_rows(real, fake, codes, labels) -> list[tuple[str, str, str, str, str]]:
    """kNN accuracy and PCA beside scikit-learn's; density and coverage beside prdc's."""
    import prdc
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier

    table = []
    train, test = slice(0, 10000), slice(10000, None)
    ours, our_s = timed(
        lambda: metrics.knn_accuracy(codes[train], labels[train], codes[test], labels[test], 5)
    )

    def sklearn_knn():
        knn = KNeighborsClassifier(n_neighbors=5).fit(codes[train].numpy(), labels[train].numpy())
        return float((knn.predict(codes[test].numpy()) == labels[test].numpy()).mean())

    theirs, their_s = timed(sklearn_knn)
    table.append(("5-NN accuracy", f"{ours:.4f}", f"{theirs:.4f}", f"{our_s:.3f}", f"{their_s:.3f}"))

    pixels = torch.rand(5000, 784, generator=torch.Generator().manual_seed(1)) ** 3
    (centre, axes), our_s = timed(lambda: metrics.pca_fit(pixels, 2))
    pca, their_s = timed(lambda: PCA(2, svd_solver="full").fit(pixels.numpy()))
    cosines = np.abs((axes.numpy() * pca.components_).sum(1))
    table.append(
        (
            "PCA axes, abs(cos) to sklearn's",
            " ".join(f"{c:.6f}" for c in cosines),
            "1 1",
            f"{our_s:.3f}",
            f"{their_s:.3f}",
        )
    )

    ours, our_s = timed(lambda: sample_quality.density_coverage(real, fake, k=5))
    theirs, their_s = timed(lambda: prdc.compute_prdc(real.numpy(), fake.numpy(), nearest_k=5))
    table.append(
        (
            "density, coverage",
            f"{ours['density']:.6f}, {ours['coverage']:.6f}",
            f"{theirs['density']:.6f}, {theirs['coverage']:.6f}",
            f"{our_s:.3f}",
            f"{their_s:.3f}",
        )
    )
    return table


def main() -> None:
    torch.set_num_threads(1)
    print("| metric | vae_lab | library | vae_lab s | library s |")
    print("|---|---|---|---|---|")
    for row in rows():
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
