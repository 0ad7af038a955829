"""The rate-distortion figures of `vae_lab.compare` (points from vae_lab/rate_distortion.py): distortion
against rate with the negative ELBO's contours and the data's limits, and each number against beta."""

import math
from pathlib import Path

import numpy as np
from matplotlib.ticker import FuncFormatter

from vae_lab.figures.plots import plt, save_figure
from vae_lab.rate_distortion import AGAINST_BETA, ARTICLE_LOSSES, Point, mean_sd, shown_beta

MARKERS = {0.0: "s", 1.0: "*", math.inf: "^"}  # the article's three losses


def _colours(found: list[Point]) -> dict[str, tuple]:
    groups = list(dict.fromkeys(p.group for p in found))
    return {group: plt.get_cmap("tab10")(i % 10) for i, group in enumerate(groups)}


def _draw_floor(axis, found: list[Point], high_r: float) -> float | None:
    """The data's likelihood floor under D, with its words; None where no run has one."""
    floors = [f for p in found for f in p.floors]
    if not floors:
        return None
    floor = float(np.mean(floors))
    axis.axhline(floor, color="black", linewidth=1)
    axis.annotate(
        f"the data's likelihood floor {floor:.1f}: D cannot go below it",
        (high_r, floor),
        xytext=(-4, 4),
        textcoords="offset points",
        ha="right",
        fontsize=8,
    )
    return floor


def _draw_contours(axis, found: list[Point], colours: dict, limits: tuple, wide_rate: bool) -> None:
    """The lines R + D = constant in grey, and each group's beta = 1 ELBO in its colour."""
    low_r, high_r, low_d, high_d = limits
    totals = np.linspace(low_r + low_d, high_r + high_d, 9)[1:-1]
    if wide_rate:
        totals = np.geomspace(low_d * 1.1, high_r + high_d, 9)[1:-1]
    r_line = np.unique(np.concatenate([np.linspace(low_r, 1, 50), np.geomspace(1, high_r, 400)]))
    for total in totals:
        axis.plot(r_line, total - r_line, color="0.85", linewidth=0.7, linestyle="--", zorder=0)
    for p in found:
        if p.beta == 1.0:
            elbo = mean_sd([r + d for r, d in zip(p.rates, p.distortions, strict=True)])[0]
            axis.plot(
                r_line,
                elbo - r_line,
                color=colours[p.group],
                linewidth=1,
                linestyle="--",
                label=f"R + D = {elbo:.1f}: the ELBO of beta = 1" + (f" ({p.group})" if p.group else ""),
            )


def _draw_log_n(axis, log_n: float, high_d: float) -> None:
    axis.axvline(log_n, color="0.4", linewidth=1, linestyle=":")
    axis.annotate(
        f"log N = {log_n:.1f}: I(x; z) <= log N",
        (log_n, high_d),
        xytext=(4, -12),
        textcoords="offset points",
        fontsize=8,
        color="0.3",
    )


def _draw_points(axis, found: list[Point], colours: dict) -> None:
    """One line of points per group, mean ± sd over seeds both ways, each named by its beta; the
    article's three losses ringed."""
    for group in colours:
        members = [p for p in found if p.group == group]
        r = [mean_sd(p.rates) for p in members]
        d = [mean_sd(p.distortions) for p in members]
        axis.errorbar(
            [m for m, _ in r],
            [m for m, _ in d],
            xerr=[s for _, s in r],
            yerr=[s for _, s in d],
            color=colours[group],
            marker="o",
            markersize=4,
            linewidth=1,
            capsize=2,
            label=group or None,
        )
        for p, (rm, _), (dm, _) in zip(members, r, d, strict=True):
            axis.annotate(
                f"beta {shown_beta(p.beta)}",
                (rm, dm),
                xytext=(5, 3),
                textcoords="offset points",
                fontsize=7,
                color=colours[group],
            )
            if p.beta in MARKERS:
                axis.scatter(
                    [rm], [dm], marker=MARKERS[p.beta], s=140, facecolors="none", edgecolors="black", zorder=4
                )
    for beta, marker in MARKERS.items():
        if any(p.beta == beta for p in found):
            axis.scatter(
                [],
                [],
                marker=marker,
                s=90,
                facecolors="none",
                edgecolors="black",
                label=f"beta = {shown_beta(beta)}: {ARTICLE_LOSSES[beta]}, as in the article",
            )


def _log_scales(axis, wide_rate: bool, wide_distortion: bool) -> None:
    """A symmetric-log rate (linear below 1 nat) and a log distortion where they span orders of
    magnitude, with plain tick labels."""
    if wide_rate:
        axis.set_xscale("symlog", linthresh=1, linscale=0.5)
    if wide_distortion:
        axis.set_yscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        axis.yaxis.set_major_formatter(plain)
        axis.yaxis.set_minor_formatter(plain)
        axis.tick_params(axis="y", which="minor", labelsize=7)


def plot_rate_distortion(found: list[Point], path: Path) -> Path:
    """D against R, one point per (group, beta) with the seeds' sd both ways, the article's losses marked
    and named; the lines R + D = constant, the beta = 1 runs' own drawn darker; the data's likelihood
    floor under D and log N, the most information z can hold about one of N images, beside R."""
    figure, axis = plt.subplots(figsize=(8.5, 6), layout="constrained")
    colours = _colours(found)
    rates = [r for p in found for r in p.rates]
    distortions = [d for p in found for d in p.distortions]
    low_r, high_r = 0.0, max(rates) * 1.15 + 1
    low_d, high_d = min(distortions) * 0.9, max(distortions) * 1.05
    floor = _draw_floor(axis, found, high_r)
    if floor is not None:
        low_d = min(low_d, floor * 0.95)
    train_images = max(p.train_images for p in found)
    log_n = math.log(train_images) if train_images > 1 else None
    if log_n is not None:
        high_r = max(high_r, log_n * 1.15)
    # rates from about 0 (KL only) to hundreds (reconstruction only) and distortions a few times apart:
    # log axes (the rate's linear below 1 nat) keep the points near the ELBO apart
    wide_rate, wide_distortion = high_r > 50, high_d > 3 * low_d
    _draw_contours(axis, found, colours, (low_r, high_r, low_d, high_d), wide_rate)
    if log_n is not None:
        _draw_log_n(axis, log_n, high_d)
    _draw_points(axis, found, colours)
    _log_scales(axis, wide_rate, wide_distortion)
    axis.set_xlim(low_r, high_r)
    axis.set_ylim(low_d, high_d)
    axis.set_xlabel("rate R = KL(q(z|x) || p(z)), nats per test image")
    axis.set_ylabel("distortion D = -log p(x|z), nats per test image")
    scales = " (log axes)" if wide_rate or wide_distortion else ""
    axis.set_title(
        f"rate against distortion{scales}, mean ± sd over seeds; grey: R + D = constant", fontsize=10
    )
    axis.legend(fontsize=8, loc="best")
    return save_figure(figure, path)


def beta_positions(betas: list[float]) -> dict[float, float]:
    """Where each beta sits on a symmetric-log axis: itself, KL only (inf) ten times the largest finite."""
    finite = [b for b in betas if math.isfinite(b)]
    top = max(finite) if finite else 1.0
    return {b: (b if math.isfinite(b) else 10 * top) for b in betas}


def plot_against_beta(found: list[Point], path: Path) -> Path:
    """Rate, distortion and each number of AGAINST_BETA against beta on a log axis (0 and KL only at its
    ends), one line per group, mean and ±sd band over seeds."""
    panels = {"rate R (nats)": "rates", "distortion D (nats)": "distortions"}
    panels |= {name: key for key, name in AGAINST_BETA.items() if any(key in p.numbers for p in found)}
    columns = 3
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.3 * columns, 3.2 * rows + 0.5), squeeze=False, layout="constrained"
    )
    for axis in axes.flat[len(panels) :]:
        axis.axis("off")
    colours = _colours(found)
    positions = beta_positions([p.beta for p in found])
    positive = sorted(b for b in positions.values() if b > 0)
    for axis, (name, key) in zip(axes.flat, panels.items(), strict=False):
        for group, colour in colours.items():
            members = [p for p in found if p.group == group]
            values = [
                getattr(p, key) if key in ("rates", "distortions") else p.numbers.get(key, [])
                for p in members
            ]
            kept = [(positions[p.beta], mean_sd(v)) for p, v in zip(members, values, strict=True) if v]
            if not kept:
                continue
            xs = [x for x, _ in kept]
            means = np.array([m for _, (m, _) in kept])
            sds = np.array([s for _, (_, s) in kept])
            axis.plot(xs, means, marker="o", markersize=3, color=colour, label=group or None)
            axis.fill_between(xs, means - sds, means + sds, color=colour, alpha=0.2, linewidth=0)
        if positive:
            axis.set_xscale("symlog", linthresh=positive[0], linscale=0.5)
        ticks = sorted(positions.items(), key=lambda item: item[1])
        axis.set_xticks([x for _, x in ticks], [shown_beta(b) for b, _ in ticks], rotation=60, fontsize=7)
        axis.minorticks_off()
        axis.set_title(name, fontsize=9)
        axis.tick_params(axis="y", labelsize=7)
    handles, names = axes.flat[0].get_legend_handles_labels()
    if names:
        figure.legend(handles, names, loc="outside lower center", ncol=min(len(names), 4), fontsize=8)
    figure.suptitle(
        "against beta (the KL term's weight; 0: reconstruction only): mean and ±sd band over seeds",
        fontsize=10,
    )
    return save_figure(figure, path)


def draw(found: list[Point], out: Path) -> list[Path]:
    return [
        plot_rate_distortion(found, out / "rate_distortion.png"),
        plot_against_beta(found, out / "metrics_vs_beta.png"),
    ]
