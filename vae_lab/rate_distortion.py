"""Runs as points of the rate-distortion plane (Alemi et al. 2018, "Fixing a Broken ELBO"): rate
R = E_x KL(q(z|x) || p(z)) and distortion D = E_x E_q -log p(x|z), both in nats per image on the test
split, and each run's beta, the weight of its KL term over that of its reconstruction.

beta = 0 is reconstruction only (loss=recon, or loss.kl_weight=0), beta = 1 the ELBO, beta = inf KL only
(loss=kl, or loss.recon_weight=0). `vae_lab.compare` writes rate_distortion.md and draws the plane
(vae_lab/figures/rate_distortion.py) for any runs of two or more betas.
"""

import math
import re
import statistics
from dataclasses import dataclass, field

from vae_lab.labels import label

BETA_KEYS = ("loss", "loss.kl_weight", "loss.recon_weight")  # what a run's beta is made of
# the article's three losses by beta, as the figures name them
ARTICLE_LOSSES = {0.0: "reconstruction only", 1.0: "the ELBO", math.inf: "KL only"}
# the numbers drawn and tabulated against beta: summary key (flattened with _) -> name
AGAINST_BETA = {
    "metrics_prior_samples_coverage": "coverage",
    "metrics_prior_samples_frechet_distance": "FD",
    "metrics_latent_holes_prior_hole_mass": "prior mass in holes",
    "metrics_latent_holes_prior_kl_q_p": "KL(q(z)||p(z))",
    "metrics_latent_active_units": "active units",
    "metrics_latent_mutual_information": "MI(x;z)",
    "metrics_iwae_nll_k100": "IWAE NLL K=100",
}


def beta_of(settings: dict[str, str]) -> float | None:
    """Give back a run's beta from its config values (kl_weight / recon_weight; a loss without one of
    the weights has it at 0), or None where neither is there."""
    if "loss.kl_weight" not in settings and "loss.recon_weight" not in settings:
        return None
    kl, recon = (float(settings.get(key, 0.0)) for key in ("loss.kl_weight", "loss.recon_weight"))
    if recon == 0:
        return math.inf if kl > 0 else None
    return kl / recon


@dataclass
class Point:
    """The runs of one beta in one group: their seeds' rates, distortions and other numbers."""

    beta: float
    group: str  # the values of the naming keys other than beta and seed: 'model.latent_dim=16'
    rates: list[float] = field(default_factory=list)
    distortions: list[float] = field(default_factory=list)
    numbers: dict[str, list[float]] = field(default_factory=dict)
    floors: list[float] = field(default_factory=list)  # the data's likelihood floor (Bernoulli: its entropy)
    train_images: int = 0

    @property
    def article_loss(self) -> str | None:
        return ARTICLE_LOSSES.get(self.beta)


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def points(rows, keys: list[str]) -> list[Point]:
    """Give back one Point per (group, beta) of the completed runs with a rate (a KL), or [] where they
    hold fewer than two betas; in order of group, then beta."""
    group_keys = [key for key in keys if key not in (*BETA_KEYS, "seed")]
    found: dict[tuple[str, float], Point] = {}
    for row in rows:
        beta = beta_of(row.settings)
        rate, distortion = row.metrics.get("test_kl"), row.metrics.get("test_recon")
        if row.status != "completed" or beta is None or rate is None or distortion is None:
            continue
        group = label(row.settings, group_keys)
        point = found.setdefault((group, beta), Point(beta, group))
        point.rates.append(rate)
        point.distortions.append(distortion)
        for key in AGAINST_BETA:
            if isinstance(row.metrics.get(key), int | float):
                point.numbers.setdefault(key, []).append(row.metrics[key])
        if isinstance(row.metrics.get("metrics_likelihood_bce_floor"), int | float):
            point.floors.append(row.metrics["metrics_likelihood_bce_floor"])
        point.train_images = int(row.metrics.get("train_images") or point.train_images)
    if len({beta for _, beta in found}) < 2:
        return []
    return [found[key] for key in sorted(found, key=lambda key: (_natural(key[0]), key[1]))]


def _natural(text: str) -> list:
    """'model.latent_dim=2' before 'model.latent_dim=16': the digits compared as numbers."""
    parts = re.findall(r"(\d+(?:\.\d+)?)|(\D+)", text)
    return [(0, float(number), "") if number else (1, 0.0, word) for number, word in parts]


def shown_beta(beta: float) -> str:
    return "KL only" if math.isinf(beta) else f"{beta:g}"


def _cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean, sd = mean_sd(values)
    digits = 3 if abs(mean) < 1 else 2
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if len(values) > 1 else "")


def table(found: list[Point]) -> str:
    """Give back rate_distortion.md: a row per group and beta, mean ± sd over its seeds."""
    names = [name for key, name in AGAINST_BETA.items() if any(key in p.numbers for p in found)]
    keys = [key for key in AGAINST_BETA if AGAINST_BETA[key] in names]
    header = ["group", "beta", "runs", "rate R", "distortion D", "R + D", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in found:
        totals = [r + d for r, d in zip(p.rates, p.distortions, strict=True)]
        named = p.article_loss and math.isfinite(p.beta)
        cells = [p.group or "all", shown_beta(p.beta) + (f" ({p.article_loss})" if named else "")]
        cells += [str(len(p.rates)), _cell(p.rates), _cell(p.distortions), _cell(totals)]
        cells += [_cell(p.numbers.get(key, [])) for key in keys]
        lines.append("| " + " | ".join(cells) + " |")
    floors = [f for p in found for f in p.floors]
    floor = (
        f" The data's likelihood floor (D cannot go below it): {statistics.fmean(floors):.2f}."
        if floors
        else ""
    )
    return (
        "# Rate and distortion by beta\n\n"
        "Test split, nats per image, mean ± sd over seeds: rate R = KL(q(z|x) || p(z)), distortion "
        "D = -log p(x|z) at one draw of q(z|x), R + D the negative ELBO (of beta = 1)."
        + floor
        + "\n\n"
        + "\n".join(lines)
        + "\n"
    )
