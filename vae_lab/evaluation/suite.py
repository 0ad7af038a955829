"""The evaluation suite of a trained model on its test split: one short section per family of metrics.

Every number is computed in vae_lab/evaluation/metrics.py, latent_holes.py, sample_quality.py and
exact_likelihood.py (definitions: docs/metrics.md). The model's passes that draw no random number run
once, first (vae_lab/evaluation/inference.py: the test loss, the test and training codes); the sections
share those tensors, run the model for what they draw themselves (importance draws, decoded grids and
samples), and hand the tensors over, in the order summary.json lists them. The test codes go back with
the metrics (Evaluation), for the run's figures and its trackers.
The sections draw their random numbers in a fixed order (the model's own draws from torch's
generator seeded with the run's seed, the held-out splits and the hole estimates from `holes`, the
prior draws from `draws`): the same model, settings and seed give the same numbers.
"""

import logging
import time
from dataclasses import dataclass

import torch

from vae_lab.data import ImageData, to_float
from vae_lab.evaluation import exact_likelihood, inference, latent_holes, metrics, sample_quality
from vae_lab.evaluation.classifier import classify, load_or_train
from vae_lab.losses import ELBO, BernoulliLikelihood, Reconstruction

log = logging.getLogger("vae_lab.evaluate")


@dataclass
class Evaluation:
    """What the suite gives back: the metrics (summary.json's "metrics"), the class histograms of the
    samples (class_histogram.png; empty where no classifier judged them), and the test split's codes
    (posterior means, or the autoencoder's codes) for the figures and the trackers."""

    metrics: dict
    histograms: dict[str, torch.Tensor]
    test_codes: torch.Tensor


def evaluate_model(
    model,
    data: ImageData,
    settings,
    seed: int,
    data_root: str,
    progress: bool = True,
    test_parts: dict | None = None,
    likelihood=None,
    known: dict | None = None,
) -> Evaluation:
    """Give back every metric of a trained model on the test split, the class histograms of its samples
    and the test codes (Evaluation).

    Likelihoods are those of the model, whatever loss trained it: the negative ELBO for a VAE, the
    reconstruction for a deterministic autoencoder, under the training loss's pixel likelihood
    (Bernoulli unless given). `test_parts` (the test recon and KL that training measured last with
    the same seed) saves evaluating them again, and `known` ({"iwae": ...}, from an earlier
    evaluation of the same model with the same settings) the IWAE bound, the costliest section. A
    data set of one class has no classifier to judge samples: those metrics are null.
    """
    started = time.perf_counter()
    likelihood = likelihood or BernoulliLikelihood()
    draws = torch.Generator().manual_seed(seed)
    devices = [data.test_images.device] if data.test_images.device.type == "cuda" else []
    classifier, accuracy = load_classifier(data, settings, data_root, progress)
    loss = (ELBO if model.is_variational else Reconstruction)(likelihood=likelihood)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        # the model's passes that draw no random number, once: the sections share them
        codes = inference.encode_codes(model, data, settings.knn_train_images)
        test = test_parts or inference.evaluate_loss(model, loss, data.test_images, 1000, seed)
        result = {"likelihood": likelihood_section(model, data, likelihood, test)}
        holes = torch.Generator().manual_seed(seed)  # the held-out split and the draws of the hole estimates
        if model.is_variational:
            result |= posterior_sections(model, data, settings, likelihood, known or {}, codes, holes)
        else:
            result |= code_sections(codes.test, settings, holes)
        result["exact_likelihood"] = exact_likelihood_section(
            model, data, settings, likelihood, codes, result
        )
        result["separability"] = separability_section(data, settings, codes)
        samples, histograms = sample_sections(model, data, settings, classifier, accuracy, codes, draws)
        result |= samples
    result["evaluation_s"] = round(time.perf_counter() - started, 2)
    return Evaluation(result, histograms, codes.test)


def likelihood_section(model, data: ImageData, likelihood, test: dict) -> dict:
    """Give back the test split's reconstruction, KL and negative ELBO (`test`: inference.evaluate_loss
    of the test split), and how far above the floor."""
    floor = likelihood.floor_nats(data.test_images)
    return {
        "negative_elbo": test["recon"] + test["kl"] if model.is_variational else None,
        "recon": test["recon"],
        "kl": test["kl"],
        "bce_floor": None,
        "recon_above_floor": test["recon"] - floor,
    } | likelihood.summary(floor)


def posterior_sections(
    model, data: ImageData, settings, likelihood, known: dict, codes: inference.Codes, holes
) -> dict:
    """Give back a VAE's IWAE bound, its latent statistics and the prior mass in holes of its aggregate
    posterior (the test split's posteriors: `codes`)."""
    mean, log_var = codes.test, codes.test_log_var
    iwae = known.get("iwae") or iwae_section(model, data, settings, likelihood)
    mi = (
        slice(None)
        if settings.mi_images is None
        else metrics.stratified_subset(data.test_labels, settings.mi_images)
    )
    latent = {
        "kl_per_dim": metrics.kl_per_dimension(mean, log_var).tolist(),
        "active_units": metrics.active_units(mean),
    } | metrics.mutual_information_all(mean[mi], log_var[mi], generator=holes)
    prior_holes = latent_holes.aggregate_posterior_holes(
        mean, log_var, settings.hole_draws, settings.hole_draws, generator=holes
    )
    return {"iwae": iwae, "latent": latent, "latent_holes": {"prior": prior_holes}}


def iwae_section(
    model, data: ImageData, settings, likelihood, images_at_once: int = 1000, draws_at_once: int = 200_000
) -> dict:
    """Give back the IWAE bounds (Burda et al. 2016) in nats: -log p(x) estimated by importance sampling
    with K = iwae_k draws from q(z|x) (nll_k<K>, and the nested K = 1, 10, 100, 1,000, 5,000 up to iwae_k),
    on a stratified subset of the test split or, with iwae_images null, on every test image."""
    subset = iwae_subset(data, settings)
    # (K, images), a chunk of images at a time: at most draws_at_once codes (K x images x latent size
    # floats, and the densities' intermediates of that size) exist at once, whatever K is
    log_weights = []
    for chunk in subset.split(max(1, min(images_at_once, draws_at_once // settings.iwae_k))):
        draws = inference.importance_draws(model, data.test_images[chunk], settings.iwae_k, likelihood)
        log_weights.append(metrics.importance_log_weights(draws.log_px_z, draws.z, draws.mean, draws.log_var))
    ks = tuple(sorted({k for k in (*IWAE_KS, settings.iwae_k) if k <= settings.iwae_k}))
    bounds = metrics.iwae_bounds(torch.cat(log_weights, 1), ks)
    nll = {f"nll_k{k}": -bound for k, bound in bounds.items()}
    return nll | {"images": len(subset), "k": settings.iwae_k}


IWAE_KS = (1, 10, 100, 1000, 5000)  # the nested bounds reported beside K = iwae_k


def iwae_subset(data: ImageData, settings) -> torch.Tensor:
    """Give back the test images the IWAE bound and the exact likelihood are measured on: a fixed,
    class-stratified subset of iwae_images, or every test image where it is null."""
    if settings.iwae_images is None:
        return torch.arange(len(data.test_images), device=data.test_labels.device)
    return metrics.stratified_subset(data.test_labels, settings.iwae_images)


def exact_likelihood_section(model, data: ImageData, settings, likelihood, codes, result: dict):
    """Give back the exact -log p(x) of a 2-d latent model by quadrature (vae_lab/evaluation/
    exact_likelihood.py) on the IWAE's test images: under the prior N(0, I) (for a VAE with the IWAE
    bounds' gaps to it) and, for an autoencoder, also under the Gaussian fitted to its training codes.
    None, with the reason logged, where the latent is not 2-d or the likelihood has no matrix form."""
    if settings.quadrature_points is None:
        return None
    if model.latent_dim != 2:
        log.info(
            f"exact log-likelihood by quadrature: skipped, the latent is {model.latent_dim}-d (a grid over "
            "the prior is for 2-d latents; the IWAE bound is the estimate there)"
        )
        return None
    if not hasattr(likelihood, "log_likelihood_matrix"):
        log.warning(
            f"exact log-likelihood by quadrature: skipped, the pixel likelihood {likelihood!r} has no "
            "log_likelihood_matrix(images, logits) (vae_lab/losses.py)"
        )
        return None
    images = to_float(data.test_images[iwae_subset(data, settings)]).flatten(1)
    section = {"prior": quadrature_nll(model, images, likelihood, settings)}
    if "iwae" in result:
        exact = section["prior"]["nll"]
        section["prior"] |= {
            f"iwae_gap_k{key[len('nll_k') :]}": value - exact
            for key, value in result["iwae"].items()
            if key.startswith("nll_k")
        }
    if not model.is_variational:
        fitted = metrics.fitted_gaussian(codes.train.double().cpu())
        section["fitted_gaussian"] = quadrature_nll(
            model, images, likelihood, settings, fitted.mean, fitted.covariance_matrix
        )
    return section


def quadrature_nll(model, images, likelihood, settings, mean=None, covariance=None) -> dict:
    """Give back exact_likelihood.quadrature_summary of the images under "decode a draw from
    N(mean, covariance)" (N(0, I) by default), the grid decoded once."""
    grid = exact_likelihood.gaussian_grid(
        settings.quadrature_points, settings.quadrature_span, mean, covariance
    )
    logits = inference.decode_logits(model, grid.codes.float().to(images.device)).flatten(1)
    log_px, log_px_coarse = exact_likelihood.log_marginal(
        images, grid, lambda batch: likelihood.log_likelihood_matrix(batch, logits)
    )
    return exact_likelihood.quadrature_summary(log_px, log_px_coarse, grid)


def code_sections(test_codes: torch.Tensor, settings, holes) -> dict:
    """Give back an autoencoder's active units and the prior's (and the fitted Gaussian's) mass in holes
    of a kernel density estimate of its codes."""
    return {
        "latent": {"active_units": metrics.active_units(test_codes)},
        "latent_holes": {
            "prior": latent_holes.gaussian_kde_holes(test_codes, settings.hole_draws, generator=holes),
            "fitted_gaussian": latent_holes.gaussian_kde_holes(
                test_codes, settings.hole_draws, fit_reference=True, generator=holes
            ),
        },
    }


def separability_section(data: ImageData, settings, codes: inference.Codes) -> dict:
    """Give back the kNN digit accuracy from the codes, its chance level, and from a 2-d PCA of pixels
    (None each, with a warning, where there are fewer training images than knn_k)."""
    if len(codes.train) < settings.knn_k:
        log.warning(
            f"kNN accuracy: skipped, {len(codes.train)} training images are fewer than knn_k={settings.knn_k}"
        )
    centre, axes = metrics.pixel_pca(to_float(data.train_images[:10000]).flatten(1), 2)
    train_pixels = to_float(data.train_images[: len(codes.train)]).flatten(1)
    return {
        "knn_accuracy": metrics.knn_accuracy(
            codes.train, codes.train_labels, codes.test, data.test_labels, settings.knn_k
        ),
        "knn_chance": metrics.majority_share(data.test_labels),
        "knn_pixels_pca2d": metrics.knn_accuracy(
            metrics.project(train_pixels, centre, axes),
            codes.train_labels,
            metrics.project(to_float(data.test_images).flatten(1), centre, axes),
            data.test_labels,
            settings.knn_k,
        ),
    }


def sample_sections(model, data: ImageData, settings, classifier, accuracy, codes: inference.Codes, draws):
    """Give back (the samples' scores and the classifier's, the class histograms of the samples).

    Samples are judged against the real test images in the classifier's features
    (vae_lab/evaluation/sample_quality.py): precision, coverage, per-class coverage, Frechet distance.
    """
    result = {"prior_samples": None}
    if not model.is_variational:
        result["fitted_gaussian_samples"] = None
    result["classifier"] = None
    if classifier is None:
        return result, {}
    if len(data.test_images) <= settings.coverage_k:
        log.warning(
            f"precision, density and coverage: skipped, {len(data.test_images)} test images are not more "
            f"than k={settings.coverage_k}"
        )
    _, test_features = classify(classifier, data.test_images)
    _, train_features = classify(classifier, data.train_images[: len(data.test_images)])
    # (summary key, histogram name, codes to decode)
    sources = [
        ("prior_samples", "N(0, I)", torch.randn(settings.prior_samples, model.latent_dim, generator=draws))
    ]
    if not model.is_variational:
        fitted = metrics.fitted_gaussian(codes.train.cpu()).sample((settings.prior_samples,))
        sources.append(("fitted_gaussian_samples", "Gaussian fitted to training codes", fitted))
    histograms = {}
    for key, name, latent_codes in sources:
        samples = inference.decode_in_batches(model, latent_codes.to(codes.train.device))
        probabilities, features = classify(classifier, samples)
        result[key] = sample_quality.score_samples(
            test_features, data.test_labels, len(data.class_names), features, settings.coverage_k
        )
        histograms[name] = sample_quality.class_histogram(probabilities)
    # what a perfect model would get: training images judged as samples against the test images
    real = sample_quality.score_samples(
        test_features, data.test_labels, len(data.class_names), train_features, settings.coverage_k
    )
    result["classifier"] = {
        "test_accuracy": accuracy,
        "frechet_floor_train_vs_test": real["frechet_distance"],
        "real_data": {key: value for key, value in real.items() if key != "coverage_per_class"},
    }
    return result, histograms


def load_classifier(data: ImageData, settings, data_root: str, progress: bool):
    """Give back (the classifier that judges samples, its test accuracy), or (None, None) for one class."""
    if len(data.class_names) < 2:
        log.warning(
            f"the data set has {len(data.class_names)} class ({', '.join(data.class_names)}): no "
            "classifier can judge the samples, so prior_samples and classifier are null and "
            "class_histogram.png is not drawn"
        )
        return None, None
    classifier, accuracy, _ = load_or_train(data, data_root, settings.classifier, progress)
    return classifier, accuracy


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
    exact = (result.get("exact_likelihood") or {}).get("prior")
    if exact is not None:
        resolved = "" if exact["resolved"] else " (grid unresolved)"
        parts.append(f"exact NLL {exact['nll']:.2f}{resolved}")
    holes = result.get("latent_holes", {}).get("prior")
    if holes is not None:
        parts.append(f"prior mass in holes {holes['hole_mass']:.2f}")
    prior = result["prior_samples"]
    if prior is not None:
        shown = {
            key: "n/a" if prior[key] is None else f"{prior[key]:.2f}"
            for key in ("precision", "coverage", "coverage_lowest_class")
        }
        parts.append(
            f"samples: precision {shown['precision']}, coverage {shown['coverage']} (lowest class "
            f"{shown['coverage_lowest_class']}), FD {prior['frechet_distance']:.1f}"
        )
    parts.append(f"{result['evaluation_s']:.0f} s")
    return "metrics: " + "  |  ".join(parts)
