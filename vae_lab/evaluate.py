"""The evaluation suite of a trained model on its test split, and its command line.

    python -m vae_lab.evaluate RUN_DIR [RUN_DIR ...]    # a run or a whole sweep folder

adds the metrics to each finished run's summary.json and redraws its figures; nothing else is
rewritten. Every number is computed in vae_lab/metrics.py (definitions: docs/metrics.md); this
module runs the model (vae_lab/inference.py) and hands the tensors over.
"""

import argparse
import logging
import math
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vae_lab import inference, metrics
from vae_lab.classifier import classify, load_or_train
from vae_lab.config import CONF_DIR, upgrade_legacy_loss
from vae_lab.data import ImageData, to_float
from vae_lab.errors import ConfigError, RunFolderError, VaeLabError
from vae_lab.figures import draw_run_figures
from vae_lab.losses import ELBO, BernoulliLikelihood, Reconstruction
from vae_lab.runs import SUMMARY_FILE, find_runs, load_run, write_json

log = logging.getLogger("vae_lab.evaluate")
DEFAULT_SETTINGS = CONF_DIR / "evaluation" / "default.yaml"


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
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Give back (every metric of a trained model on the test split, the class histograms of its samples).

    Likelihoods are those of the model, whatever loss trained it: the negative ELBO for a VAE, the
    reconstruction for a deterministic autoencoder, under the training loss's pixel likelihood
    (Bernoulli unless given). `test_parts` (the test recon and KL that training measured last with
    the same seed) saves evaluating them again, and `known` ({"iwae": ...}, from an earlier
    evaluation of the same model with the same settings) the IWAE bound, the costliest section. A
    data set of one class has no classifier to judge samples: those metrics are null. Longer than a
    screen on purpose: one section per family of metrics, each a call into vae_lab/metrics.py, in the
    order summary.json lists them.
    """
    started = time.perf_counter()
    likelihood = likelihood or BernoulliLikelihood()
    generator = torch.Generator().manual_seed(seed)
    devices = [data.test_images.device] if data.test_images.device.type == "cuda" else []
    classifier, accuracy = load_classifier(data, settings, data_root, progress)
    result: dict = {}
    latent = model.latent_dim
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        loss = (ELBO if model.is_variational else Reconstruction)(likelihood=likelihood)
        test = test_parts or inference.evaluate_loss(model, loss, data.test_images, 1000, seed)
        floor = likelihood.floor_nats(data.test_images)
        result["likelihood"] = {
            "negative_elbo": test["recon"] + test["kl"] if model.is_variational else None,
            "recon": test["recon"],
            "kl": test["kl"],
            "bce_floor": None,
            "recon_above_floor": test["recon"] - floor,
        } | likelihood.summary(floor)
        holes = torch.Generator().manual_seed(seed)  # the held-out split and the draws of the hole estimates
        if model.is_variational:
            mean, log_var = inference.encode_posteriors(model, data.test_images)
            if (known or {}).get("iwae"):
                result["iwae"] = known["iwae"]
            else:
                subset = metrics.stratified_subset(data.test_labels, settings.iwae_images)
                images = data.test_images[subset]
                draws = inference.importance_draws(model, images, settings.iwae_k, likelihood)
                log_weights = metrics.importance_log_weights(
                    draws.log_px_z, draws.z, draws.mean, draws.log_var
                )
                ks = tuple(sorted({k for k in (1, 10, 100, settings.iwae_k) if k <= settings.iwae_k}))
                bounds = metrics.iwae_bounds(log_weights, ks)
                result["iwae"] = {f"nll_k{k}": -bound for k, bound in bounds.items()} | {
                    "images": len(subset)
                }
            mi = (
                slice(None)
                if settings.mi_images is None
                else metrics.stratified_subset(data.test_labels, settings.mi_images)
            )
            result["latent"] = {
                "kl_per_dim": metrics.kl_per_dimension(mean, log_var).tolist(),
                "active_units": metrics.active_units(mean),
            } | metrics.mutual_information_all(mean[mi], log_var[mi], generator=holes)
            result["latent_holes"] = {
                "prior": metrics.aggregate_posterior_holes(
                    mean, log_var, settings.hole_draws, settings.hole_draws, generator=holes
                )
            }
            test_codes = mean
        else:
            test_codes = inference.encode_means(model, data.test_images)
            result["latent"] = {"active_units": metrics.active_units(test_codes)}
            result["latent_holes"] = {
                "prior": metrics.gaussian_kde_holes(test_codes, settings.hole_draws, generator=holes),
                "fitted_gaussian": metrics.gaussian_kde_holes(
                    test_codes, settings.hole_draws, fit_reference=True, generator=holes
                ),
            }
        knn_train = slice(0, settings.knn_train_images)  # the first N training images fit the kNN vote
        train_codes = inference.encode_means(model, data.train_images[knn_train])
        train_labels = data.train_labels[knn_train]
        centre, axes = metrics.pixel_pca(to_float(data.train_images[:10000]).flatten(1), 2)
        result["separability"] = {
            "knn_accuracy": knn_or_none(
                train_codes, train_labels, test_codes, data.test_labels, settings.knn_k
            ),
            "knn_chance": metrics.majority_share(data.test_labels),
            "knn_pixels_pca2d": knn_or_none(
                metrics.project(to_float(data.train_images[knn_train]).flatten(1), centre, axes),
                train_labels,
                metrics.project(to_float(data.test_images).flatten(1), centre, axes),
                data.test_labels,
                settings.knn_k,
            ),
        }
        histograms = {}
        result["prior_samples"] = None
        if not model.is_variational:
            result["fitted_gaussian_samples"] = None
        result["classifier"] = None
        if classifier is not None:
            # samples are judged against real images: in the classifier's features (density, coverage),
            # and in pixels (is a sample as near its nearest training image as real test images are?)
            _, test_features = classify(classifier, data.test_images)
            train_probabilities, train_features = classify(
                classifier, data.train_images[: len(data.test_images)]
            )
            train_pixels = to_float(data.train_images[knn_train]).flatten(1)
            test_nearest = metrics.nearest_distances(to_float(data.test_images).flatten(1), train_pixels)
            real_distance = metrics.real_distance_threshold(test_nearest, settings.real_quantile)
            classes = len(data.class_names)
            # (summary key, histogram name, codes to decode)
            draws = [
                ("prior_samples", "N(0, I)", torch.randn(settings.prior_samples, latent, generator=generator))
            ]
            if not model.is_variational:
                fitted = metrics.fitted_gaussian(train_codes.cpu())
                codes = fitted.sample((settings.prior_samples,))
                draws.append(("fitted_gaussian_samples", "Gaussian fitted to training codes", codes))
            for key, name, codes in draws:
                samples = inference.decode_in_batches(model, codes.to(train_codes.device))
                probabilities, features = classify(classifier, samples)
                nearest = metrics.nearest_distances(samples.flatten(1), train_pixels)
                result[key] = metrics.prior_sample_scores(probabilities) | {
                    "recognised_share": metrics.recognised_and_real(probabilities, nearest, real_distance),
                    **fidelity_or_none(
                        test_features, features, data.test_labels, classes, settings.coverage_k
                    ),
                    "frechet_distance": metrics.frechet_distance(features, test_features),
                }
                histograms[name] = metrics.class_histogram(probabilities)
            real = fidelity_or_none(
                test_features, train_features, data.test_labels, classes, settings.coverage_k
            )
            result["classifier"] = {
                "test_accuracy": accuracy,
                "frechet_floor_train_vs_test": metrics.frechet_distance(train_features, test_features),
                # what a perfect model would get: training images judged as samples against the test images
                "real_data": {
                    "confident_share": metrics.prior_sample_scores(train_probabilities)["confident_share"],
                    **{key: value for key, value in real.items() if key != "coverage_per_class"},
                    "real_distance_threshold": real_distance,
                },
            }
    result["evaluation_s"] = round(time.perf_counter() - started, 2)
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


def fidelity_or_none(real_features, fake_features, labels, classes: int, k: int) -> dict:
    """metrics.density_coverage and per-class coverage of samples against real images; None each (with a
    warning) where there are no more real images than k, so no radius is defined."""
    names = ("density", "coverage", "coverage_lowest_class", "coverage_highest_class", "coverage_per_class")
    if len(real_features) <= k:
        log.warning(
            f"density and coverage: skipped, {len(real_features)} test images are not more than k={k}"
        )
        return dict.fromkeys(names)
    fidelity = metrics.density_coverage(real_features, fake_features, k)
    per_class = metrics.per_class_coverage(fidelity["covered"], labels, classes)
    values = (fidelity["density"], fidelity["coverage"], per_class["lowest"], per_class["highest"])
    shares = [None if math.isnan(share) else share for share in per_class["per_class"]]  # None: no image
    return dict(zip(names, (*values, shares), strict=True))


def knn_or_none(train_codes, train_labels, test_codes, test_labels, k: int) -> float | None:
    """metrics.knn_accuracy, or None (with a warning) where there are fewer training codes than k."""
    if len(train_codes) < k:
        log.warning(f"kNN accuracy: skipped, {len(train_codes)} training images are fewer than knn_k={k}")
        return None
    return metrics.knn_accuracy(train_codes, train_labels, test_codes, test_labels, k)


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
    holes = result.get("latent_holes", {}).get("prior")
    if holes is not None:
        parts.append(f"prior mass in holes {holes['hole_mass']:.2f}")
    prior = result["prior_samples"]
    if prior is not None:
        shown = {key: "n/a" if prior[key] is None else f"{prior[key]:.2f}" for key in ("coverage", "density")}
        parts.append(
            f"samples recognised {prior['recognised_share']:.2f} (confident {prior['confident_share']:.2f}), "
            f"coverage {shown['coverage']}, density {shown['density']}, FD {prior['frechet_distance']:.1f}"
        )
    parts.append(f"{result['evaluation_s']:.0f} s")
    return "metrics: " + "  |  ".join(parts)


def evaluation_settings(run_config, overrides: list[str] = ()) -> OmegaConf:
    """Give back a run's evaluation settings, with today's defaults (conf/evaluation/default.yaml)
    for keys the run's vae_lab did not have yet, and `overrides` ("mi_images=null") last."""
    try:
        given = OmegaConf.from_dotlist(list(overrides))
    except Exception as error:  # omegaconf's grammar errors
        raise ConfigError(f"--set {' '.join(overrides)}: {error}") from None
    settings = OmegaConf.merge(OmegaConf.load(DEFAULT_SETTINGS), run_config.get("evaluation", {}))
    unknown = sorted(set(given) - set(settings))
    if unknown:
        raise ConfigError(
            f"--set {', '.join(unknown)}: not an evaluation key; the keys are {', '.join(settings)}"
        )
    return OmegaConf.merge(settings, given)


def evaluate_folder(
    run_dir: Path,
    data_root: str | None = None,
    device: str = "cpu",
    overrides: list[str] = (),
    reuse: list[str] = (),
) -> dict:
    """Add the metrics to one finished run's summary.json and redraw its figures; give back the summary."""
    run = load_run(run_dir, device=device)
    if run.summary.get("status") != "completed":
        raise RunFolderError(
            f"{run_dir} has status {run.summary.get('status')!r}: only completed runs are evaluated."
        )
    data_cfg = run.config.data.copy()
    if data_root:
        data_cfg.root = data_root
    data = instantiate(data_cfg).to(torch.device(device))
    loss_cfg = upgrade_legacy_loss(OmegaConf.to_container(run.config.loss))
    likelihood = instantiate(loss_cfg).likelihood  # the pixel likelihood the run was trained with
    result, histograms = evaluate_model(
        run.model,
        data,
        evaluation_settings(run.config, overrides),
        run.config.seed,
        data_cfg.root,
        test_parts=run.summary.get("test"),
        likelihood=likelihood,
        known={name: (run.summary.get("metrics") or {}).get(name) for name in reuse},
    )
    figures = draw_run_figures(run.model, data, run_dir, run.config.seed, True, histograms)
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
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an evaluation setting for this evaluation (repeatable), e.g. --set mi_images=null",
    )
    parser.add_argument(
        "--reuse",
        action="append",
        default=[],
        choices=["iwae"],
        help="keep this section of the run's earlier metrics instead of computing it again (the IWAE "
        "bound is the costliest; the same model and settings give the same numbers)",
    )
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
    for number, run_dir in enumerate(runs, 1):
        print(f"[{number}/{len(runs)}] evaluating {run_dir}", flush=True)
        try:
            summary = evaluate_folder(run_dir, args.data_root, args.device, args.set, args.reuse)
        except VaeLabError as error:
            print(f"vae-lab-evaluate: skipped {run_dir}: {error}", file=sys.stderr)
            failures += 1
            continue
        print(f"{run_dir}: evaluated in {summary['metrics']['evaluation_s']:.0f} s")
    return 1 if failures == len(runs) else 0


if __name__ == "__main__":
    sys.exit(main())
