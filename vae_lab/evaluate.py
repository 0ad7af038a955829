"""What a trained model gives on the test split: losses, codes, figures' tensors, and every metric.

    python -m vae_lab.evaluate RUN_DIR [RUN_DIR ...]    # a run or a whole sweep folder

adds the metrics to each finished run's summary.json (and their figures) and rewrites nothing else.
"""

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy.stats import norm

from vae_lab import metrics, plots
from vae_lab.classifier import classify, load_or_train
from vae_lab.config import EvaluationSchema
from vae_lab.data import ImageData, in_order, to_float
from vae_lab.errors import RunFolderError, VaeLabError
from vae_lab.losses import ELBO, BernoulliLikelihood, Reconstruction, WeightedLoss
from vae_lab.runs import SUMMARY_FILE, find_runs, load_run, write_json

log = logging.getLogger("vae_lab.evaluate")


def _posterior_mean(model, images: torch.Tensor) -> torch.Tensor:
    encoded = model.encode(images)
    return encoded.mean if model.is_variational else encoded


@torch.no_grad()
def evaluate_loss(
    model, loss: WeightedLoss, images: torch.Tensor, batch_size: int, seed: int = 0
) -> dict[str, float | None]:
    """Give back the split's mean total, reconstruction and KL in nats per image.

    The VAE's single-sample estimate draws its noise from a fixed seed, so the same model
    gives the same numbers every time (load_run relies on it).
    """
    model.eval()
    sums = {"total": 0.0, "recon": 0.0, "kl": 0.0}
    has_kl = True
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for batch in in_order(len(images), batch_size):
            x = to_float(images[batch])
            parts = loss(model(x), x)
            weight = len(x)
            sums["total"] += parts.total.item() * weight
            sums["recon"] += parts.recon.item() * weight
            if parts.kl is None:
                has_kl = False
            else:
                sums["kl"] += parts.kl.item() * weight
    result = {key: value / len(images) for key, value in sums.items()}
    if not has_kl:
        result["kl"] = None
    return result


@torch.no_grad()
def encode_means(model, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Give back the code of each image (the posterior mean for a VAE): (N, latent_dim)."""
    model.eval()
    return torch.cat([_posterior_mean(model, to_float(images[b])) for b in in_order(len(images), batch_size)])


@torch.no_grad()
def reconstruct(model, images: torch.Tensor) -> torch.Tensor:
    """Give back the decoded codes of uint8 images as pixel probabilities."""
    model.eval()
    return model.decode(_posterior_mean(model, to_float(images)))


def manifold_values(size: int = 15) -> np.ndarray:
    """Give back the article's grid values: equally spaced quantiles of N(0, 1)."""
    return norm.ppf(np.linspace(0.01, 0.99, size))


@torch.no_grad()
def decode_manifold(model, size: int = 15) -> tuple[torch.Tensor, np.ndarray]:
    """Give back (size*size decoded images in row-major order, the grid values) for a 2-d latent.

    Row i has z2 = values[size - 1 - i] (top row is the largest), column j has z1 = values[j].
    """
    model.eval()
    values = manifold_values(size)
    z1, z2 = np.meshgrid(values, values[::-1])
    codes = torch.tensor(np.stack([z1.ravel(), z2.ravel()], axis=1), dtype=torch.float32)
    device = next(model.parameters()).device
    return model.decode(codes.to(device)), values


def stratified_subset(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Give back the indices of the first count/C images of each class: the same subset every time."""
    classes = int(labels.max()) + 1
    per_class = max(1, count // classes)
    chosen = [torch.nonzero(labels == c).flatten()[:per_class] for c in range(classes)]
    return torch.cat(chosen).sort().values


@torch.no_grad()
def importance_log_weights(
    model, images: torch.Tensor, k: int, max_decodes: int = 1000, likelihood=None
) -> torch.Tensor:
    """Give back log p(x|z) + log p(z) - log q(z|x) for k draws z ~ q(z|x) per image: (k, N).

    p(x|z) is the training loss's pixel likelihood (Bernoulli unless given).
    """
    likelihood = likelihood or BernoulliLikelihood()
    model.eval()
    columns = []
    per_chunk = max(1, max_decodes // k)
    for batch in in_order(len(images), per_chunk):
        x = to_float(images[batch])
        mean, log_var = model.encode(x)
        z = mean + torch.exp(0.5 * log_var) * torch.randn(k, *mean.shape, device=mean.device)  # (k, b, D)
        logits = model.decoder(z.flatten(0, 1)).view(k, *x.shape)
        targets = x.expand(k, *x.shape).flatten(0, 1)
        log_px_z = -likelihood.nats_per_image(logits.flatten(0, 1), targets).view(k, -1)
        log_pz = metrics.gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z))
        log_qz_x = metrics.gaussian_log_density(z, mean, log_var)
        columns.append(log_px_z + log_pz - log_qz_x)
    return torch.cat(columns, 1)


@torch.no_grad()
def encode_posteriors(
    model, images: torch.Tensor, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Give back the VAE's posterior means and log-variances of the images: (N, D) each."""
    model.eval()
    pairs = [model.encode(to_float(images[b])) for b in in_order(len(images), batch_size)]
    return torch.cat([p.mean for p in pairs]), torch.cat([p.log_var for p in pairs])


@torch.no_grad()
def decode_in_batches(model, codes: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model.decode(codes[b]) for b in in_order(len(codes), batch_size)])


def _sample_metrics(
    classifier, samples: torch.Tensor, test_features: torch.Tensor
) -> tuple[dict, torch.Tensor]:
    probabilities, features = classify(classifier, samples)
    scores = metrics.prior_sample_scores(probabilities)
    scores["frechet_distance"] = metrics.frechet_distance(features, test_features)
    return scores, metrics.class_histogram(probabilities)


FLOOR_CHUNK = 10000  # test images per call of the entropy floor (float64 copies of large splits add up)


def reconstruction_floor(likelihood, images: torch.Tensor) -> float:
    """Give back the lowest mean -log p(x|z) any decoder can reach on uint8 images under the likelihood."""
    if likelihood.name == "gaussian":
        return likelihood.floor_nats(images[0].numel())
    total = 0.0
    for batch in in_order(len(images), FLOOR_CHUNK):
        total += metrics.binary_entropy_floor_nats(to_float(images[batch])) * (batch.stop - batch.start)
    return total / len(images)


def pixel_pca(train_images: torch.Tensor, dims: int = 2, exact_up_to: int = 4096):
    """Give back (centre, components (dims, D)) of the first 10,000 training images' pixels.

    Up to `exact_up_to` pixels per image, an exact SVD (MNIST's numbers); above it, torch's
    randomised PCA (Halko et al. 2011), whose two leading axes are as good for a 2-d kNN baseline.
    """
    pixels = to_float(train_images[:10000]).flatten(1)
    if pixels.shape[1] <= exact_up_to:
        return metrics.pca_fit(pixels, dims)
    centre = pixels.mean(0)
    _, _, vectors = torch.pca_lowrank(pixels - centre, q=dims + 8, center=False)
    return centre, vectors[:, :dims].T


def _knn_or_none(train_codes, train_labels, test_codes, test_labels, k: int, what: str) -> float | None:
    if len(train_codes) < k:
        log.warning(f"{what}: skipped, {len(train_codes)} training images are fewer than knn_k={k}")
        return None
    return metrics.knn_accuracy(train_codes, train_labels, test_codes, test_labels, k)


def evaluate_model(
    model,
    data: ImageData,
    settings,
    seed: int,
    classifier,
    classifier_accuracy: float,
    test_parts: dict | None = None,
    likelihood=None,
):
    """Give back (metrics, extras for the figures) of a trained model on the test split (README "Metrics").

    Likelihoods are those of the model, whatever loss trained it: the negative ELBO for a VAE, the
    reconstruction for a deterministic autoencoder, under the training loss's pixel likelihood
    (Bernoulli unless given). `test_parts` (the test recon and KL that training measured last with
    the same seed, for any loss) saves evaluating them again. `classifier` None (a data set of one
    class) leaves the classifier's metrics out, as null.
    """
    likelihood = likelihood or BernoulliLikelihood()
    loss_class = ELBO if model.is_variational else Reconstruction
    loss = loss_class(**likelihood.settings())
    generator = torch.Generator().manual_seed(seed)
    devices = [data.test_images.device] if data.test_images.device.type == "cuda" else []
    result: dict = {}
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        test = test_parts or evaluate_loss(model, loss, data.test_images, 1000, seed)
        floor = reconstruction_floor(likelihood, data.test_images)
        result["likelihood"] = {
            "negative_elbo": test["recon"] + test["kl"] if model.is_variational else None,
            "recon": test["recon"],
            "kl": test["kl"],
            "bce_floor": floor if likelihood.name == "bernoulli" else None,
            "recon_above_floor": test["recon"] - floor,
        }
        if likelihood.name == "gaussian":
            result["likelihood"] |= {"gaussian_floor": floor, "gaussian_variance": likelihood.variance}
        if model.is_variational:
            mean, log_var = encode_posteriors(model, data.test_images)
            test_codes = mean
        else:
            test_codes = encode_means(model, data.test_images)
        knn_train = slice(0, settings.knn_train_images)  # the first N training images fit the kNN vote
        train_codes = encode_means(model, data.train_images[knn_train])
        if model.is_variational:
            subset = stratified_subset(data.test_labels, settings.iwae_images)
            log_weights = importance_log_weights(
                model, data.test_images[subset], settings.iwae_k, likelihood=likelihood
            )
            ks = tuple(k for k in (1, 10, 100, settings.iwae_k) if k <= settings.iwae_k)
            bounds = metrics.iwae_bounds(log_weights, tuple(sorted(set(ks))))
            result["iwae"] = {f"nll_k{k}": -bound for k, bound in bounds.items()} | {"images": len(subset)}
            mi_subset = stratified_subset(data.test_labels, settings.mi_images)
            z = mean[mi_subset] + torch.exp(0.5 * log_var[mi_subset]) * torch.randn_like(mean[mi_subset])
            result["latent"] = {
                "kl_per_dim": metrics.kl_per_dimension(mean, log_var).tolist(),
                "active_units": metrics.active_units(mean),
                "mutual_information": metrics.mutual_information(mean[mi_subset], log_var[mi_subset], z),
                "mutual_information_max": math.log(len(mi_subset)),
            }
        else:
            result["latent"] = {"active_units": metrics.active_units(test_codes)}
        centre, components = pixel_pca(data.train_images, 2)

        def pca(images: torch.Tensor) -> torch.Tensor:
            return (to_float(images).flatten(1) - centre) @ components.T

        train_labels = data.train_labels[knn_train]
        result["separability"] = {
            "knn_accuracy": _knn_or_none(
                train_codes, train_labels, test_codes, data.test_labels, settings.knn_k, "kNN accuracy"
            ),
            "knn_chance": metrics.majority_share(data.test_labels),
            "knn_pixels_pca2d": _knn_or_none(
                pca(data.train_images[knn_train]),
                train_labels,
                pca(data.test_images),
                data.test_labels,
                settings.knn_k,
                "kNN accuracy of pixels",
            ),
        }
        histograms = {}
        if classifier is None:
            result["prior_samples"] = None
            if not model.is_variational:
                result["fitted_gaussian_samples"] = None
            result["classifier"] = None
        else:
            histograms = _classifier_metrics(
                model, data, settings, classifier, classifier_accuracy, train_codes, generator, result
            )
    return result, {"histograms": histograms, "test_codes": test_codes}


def _classifier_metrics(
    model, data: ImageData, settings, classifier, classifier_accuracy, train_codes, generator, result: dict
) -> dict[str, torch.Tensor]:
    """Judge decoded prior draws with the classifier, into result; give back the class histograms."""
    device = train_codes.device
    _, test_features = classify(classifier, data.test_images)
    _, train_features = classify(classifier, data.train_images[: len(data.test_images)])
    prior_codes = torch.randn(settings.prior_samples, model.latent_dim, generator=generator)
    prior, histogram = _sample_metrics(
        classifier, decode_in_batches(model, prior_codes.to(device)), test_features
    )
    result["prior_samples"] = prior
    histograms = {"N(0, I)": histogram}
    if not model.is_variational:
        fitted = torch.distributions.MultivariateNormal(
            train_codes.mean(0).cpu(),
            covariance_matrix=train_codes.T.cov().cpu() + 1e-6 * torch.eye(model.latent_dim),
        )
        codes = fitted.sample((settings.prior_samples,)).to(device)
        result["fitted_gaussian_samples"], histograms["Gaussian fitted to training codes"] = _sample_metrics(
            classifier, decode_in_batches(model, codes), test_features
        )
    result["classifier"] = {
        "test_accuracy": classifier_accuracy,
        "frechet_floor_train_vs_test": metrics.frechet_distance(train_features, test_features),
    }
    return histograms


@torch.no_grad()
def interpolations(model, images: torch.Tensor, labels: torch.Tensor, pairs: int = 8, steps: int = 10):
    """Give back decoded straight lines between codes of test images of different classes.

    With fewer classes than pairs, later pairs join other images of the same classes.
    """
    present = labels.unique().tolist()
    per_class = -(-2 * pairs // len(present))  # enough images of each class for every line's ends
    members = [torch.nonzero(labels == c).flatten()[:per_class].tolist() for c in present]
    firsts = [m[0] for m in members] if len(present) >= pairs else _interleave(members)
    starts = [firsts[i % len(firsts)] for i in range(pairs)]
    ends = [firsts[(i + 1 + i // len(firsts)) % len(firsts)] for i in range(pairs)]
    codes = _posterior_mean(model.eval(), to_float(images[starts + ends]))
    a, b = codes[:pairs], codes[pairs:]
    weights = torch.linspace(0, 1, steps, device=codes.device).view(1, steps, 1)
    path = a.unsqueeze(1) * (1 - weights) + b.unsqueeze(1) * weights  # (pairs, steps, D)
    return model.decode(path.flatten(0, 1))


def _interleave(lists: list[list[int]]) -> list[int]:
    """[[a1, a2], [b1], [c1, c2]] -> [a1, b1, c1, a2, c2]."""
    longest = max(len(items) for items in lists)
    return [items[i] for i in range(longest) for items in lists if i < len(items)]


@torch.no_grad()
def traversals(model, centre: torch.Tensor, dims: int = 16, steps: int = 9, span: float = 3.0):
    """Give back decodings of each latent dimension varied in turn from -span to span around centre."""
    dims = min(dims, model.latent_dim)
    offsets = torch.linspace(-span, span, steps, device=centre.device)
    codes = centre.repeat(dims, steps, 1)  # (dims, steps, D)
    for d in range(dims):
        codes[d, :, d] = centre[d] + offsets
    return model.decode(codes.flatten(0, 1)), dims


def evaluate_and_draw(
    model,
    data: ImageData,
    settings,
    seed: int,
    data_root: str,
    run_dir: Path,
    progress=True,
    test_parts: dict | None = None,
    likelihood=None,
):
    """Compute every metric, draw the evaluation figures into run_dir; give back (metrics, figure names).

    `likelihood`: the training loss's pixel likelihood (`loss.likelihood`), Bernoulli unless given.
    """
    started = time.perf_counter()
    classifier, accuracy = None, None
    if len(data.class_names) < 2:
        log.warning(
            f"the data set has {len(data.class_names)} class ({', '.join(data.class_names)}): no "
            "classifier can judge the samples, so prior_samples and classifier are null and "
            "class_histogram.png is not drawn"
        )
    else:
        classifier, accuracy, _ = load_or_train(data, data_root, settings.classifier, progress)
    result, extras = evaluate_model(
        model, data, settings, seed, classifier, accuracy, test_parts, likelihood=likelihood
    )
    drawn = []
    if extras["histograms"]:
        drawn.append(
            plots.plot_class_histograms(
                extras["histograms"], data.class_names, run_dir / "class_histogram.png"
            )
        )
    drawn.append(
        plots.plot_image_grid(
            interpolations(model, data.test_images, data.test_labels),
            run_dir / "interpolation.png",
            title="straight lines between test codes, decoded",
        )
    )
    if model.latent_dim > 2:
        images, dims = traversals(model, extras["test_codes"].mean(0))
        drawn.append(
            plots.plot_image_grid(
                images,
                run_dir / "traversal.png",
                cols=9,
                title=f"each of {dims} latent dimensions from -3 to 3 around the mean",
            )
        )
    result["evaluation_s"] = round(time.perf_counter() - started, 2)
    return result, [path.name for path in drawn]


def one_line(result: dict) -> str:
    """Give back the headline metrics as one readable log line."""
    parts = []
    if "iwae" in result:
        k = max(int(key[len("nll_k") :]) for key in result["iwae"] if key.startswith("nll_k"))
        parts.append(f"IWAE NLL (K={k}) {result['iwae'][f'nll_k{k}']:.2f}")
    parts.append(f"recon above floor {result['likelihood']['recon_above_floor']:.2f}")
    if "mutual_information" in result["latent"]:
        parts.append(f"MI {result['latent']['mutual_information']:.2f}")
    parts.append(f"active units {result['latent']['active_units']}")
    if result["separability"]["knn_accuracy"] is not None:
        parts.append(f"kNN {result['separability']['knn_accuracy']:.3f}")
    prior = result["prior_samples"]
    if prior is not None:
        parts.append(
            f"samples recognised {prior['recognised_share']:.2f}, IS {prior['inception_score']:.2f}, "
            f"FD {prior['frechet_distance']:.1f}"
        )
    parts.append(f"{result['evaluation_s']:.0f} s")
    return "metrics: " + "  |  ".join(parts)


def evaluate_folder(run_dir: Path, data_root: str | None = None, device: str = "cpu") -> dict:
    """Add the metrics to one finished run's summary.json; give back the updated summary."""
    run = load_run(run_dir, device=device)
    if run.summary.get("status") != "completed":
        raise RunFolderError(
            f"{run_dir} has status {run.summary.get('status')!r}: only completed runs are evaluated."
        )
    data_cfg = run.config.data.copy()
    if data_root:
        data_cfg.root = data_root
    data = instantiate(data_cfg).to(torch.device(device))
    settings = OmegaConf.merge(OmegaConf.structured(EvaluationSchema), run.config.get("evaluation", {}))
    likelihood = instantiate(run.config.loss).likelihood  # the pixel likelihood the run was trained with
    result, figures = evaluate_and_draw(
        run.model,
        data,
        settings,
        run.config.seed,
        data_cfg.root,
        run_dir,
        test_parts=run.summary.get("test"),
        likelihood=likelihood,
    )
    summary = dict(run.summary)
    summary["metrics"] = result
    summary["figures"] = list(dict.fromkeys([*summary.get("figures", []), *figures]))
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vae-lab-evaluate", description="Add vae_lab's metrics to finished runs."
    )
    parser.add_argument("folders", nargs="+", type=Path, help="run or sweep folders (searched recursively)")
    parser.add_argument("--data-root", help="where the runs' data set lies, when not where they were trained")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs = [run for folder in args.folders if folder.is_dir() for run in find_runs([folder])]
    if not runs:
        print(
            f"vae-lab-evaluate: no runs under {', '.join(map(str, args.folders))}: a run folder holds "
            ".hydra/config.yaml, as `python -m vae_lab.train` writes under outputs/.",
            file=sys.stderr,
        )
        return 2
    failures = 0
    for run_dir in runs:
        try:
            summary = evaluate_folder(run_dir, args.data_root, args.device)
        except VaeLabError as error:
            print(f"vae-lab-evaluate: skipped {run_dir}: {error}", file=sys.stderr)
            failures += 1
            continue
        print(f"{run_dir}: evaluated in {summary['metrics']['evaluation_s']:.0f} s")
    return 1 if failures == len(runs) else 0


if __name__ == "__main__":
    sys.exit(main())
