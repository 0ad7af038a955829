"""Compare runs: one or more folders of runs -> a table and side-by-side figures.

    python -m vae_lab.compare outputs/multirun/<date>/<time> [more folders] [--out DIR] [--by KEY]

Every folder holding `.hydra/config.yaml` below the given folders is a run. Runs that failed or
never finished appear in the table with their status and error; figures use the finished ones,
read back through `load_run`.
"""

import argparse
import csv
import logging
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vae_lab import rate_distortion
from vae_lab.errors import VaeLabError
from vae_lab.figures import rate_distortion as rate_distortion_figures
from vae_lab.figures.comparison_figures import draw_comparisons
from vae_lab.labels import common_values, distinguishing_keys, label, run_settings, varying_keys
from vae_lab.training.run_folder import find_runs, flatten, read_summary

log = logging.getLogger("vae_lab.compare")
FIRST_METRICS = ["test_total", "test_recon", "test_kl"]
# stated above the table where every run shares them, whether or not the command line set them
ALWAYS_STATED = ("trainer.epochs", "trainer.batch_size", "optimizer.lr", "model.latent_dim")
# the Markdown table's columns (the CSV has every number): the likelihood, then one number per claim
HEADLINE_METRICS = {
    "test_total": "test total",
    "test_recon": "test recon",
    "test_kl": "test KL",
    "metrics_iwae_nll_k100": "IWAE NLL K=100",
    "metrics_latent_mutual_information": "MI(x;z)",
    "metrics_latent_mutual_information_max": "MI cap (log N)",
    "metrics_latent_active_units": "active units",
    "metrics_separability_knn_accuracy": "5-NN acc.",
    "metrics_exact_likelihood_prior_nll": "exact NLL (2-d quadrature)",
    "metrics_exact_likelihood_prior_iwae_gap_k100": "IWAE K=100 gap to exact",
    "metrics_exact_likelihood_prior_mean_abs_spacing_change_nats": "quadrature: change at twice the spacing",
    "metrics_exact_likelihood_fitted_gaussian_nll": "exact NLL, fitted Gaussian",
    "metrics_prior_samples_coverage": "coverage",
    "metrics_prior_samples_coverage_lowest_class": "lowest class coverage",
    "metrics_prior_samples_frechet_distance": "FD",
    "metrics_latent_holes_prior_hole_mass": "prior mass in holes",
    "metrics_latent_holes_prior_hole_mass_upper": "prior mass in holes, plain reading (upper)",
    "metrics_latent_holes_prior_kl_q_p": "KL(q(z)||p(z))",
    "metrics_latent_holes_fitted_gaussian_hole_mass": "holes under fitted Gaussian",
    "metrics_fitted_gaussian_samples_frechet_distance": "fitted-Gaussian FD",
    "metrics_fitted_gaussian_samples_coverage": "fitted-Gaussian coverage",
}


@dataclass
class RunRow:
    """One run as the table shows it."""

    path: Path
    name: str  # its folder, relative to the first folder compared
    settings: dict[str, str]  # vae_lab/labels.py: choices, overrides and config values, less where and how
    stated: dict[str, str]  # its choices and overrides alone
    status: str
    error: str
    metrics: dict[str, float | None]


def summary_numbers(data: dict[str, Any]) -> dict[str, float | None]:
    """Give back every number in a nested dict, keys joined by '_' (None kept: not applicable)."""
    return {
        name: value
        for name, value in flatten(data, sep="_").items()
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool))
    }


def read_row(run_dir: Path, base: Path) -> RunRow:
    summary = read_summary(run_dir)
    if not summary:
        status, error, metrics = "incomplete", "no summary.json: still running, or killed", {}
    else:
        status, error = summary.get("status", "unknown"), summary.get("error", "")
        metrics = summary_numbers({k: v for k, v in summary.items() if k not in ("status", "error")})
    try:
        name = str(run_dir.relative_to(base)) if run_dir != base else run_dir.name
    except ValueError:
        name = str(run_dir)
    settings, stated = run_settings(run_dir), run_settings(run_dir, config_values=False)
    stated |= {key: settings[key] for key in ALWAYS_STATED if key in settings}
    return RunRow(run_dir, name, settings, stated, status, error, metrics)


def naming_keys(rows: list[RunRow]) -> list[str]:
    """The fewest keys whose values tell the runs apart (vae_lab/labels.py)."""
    return distinguishing_keys([row.settings for row in rows])


def row_label(row: RunRow, keys: list[str]) -> str:
    """Name a run by the values of the keys that tell it apart from the others."""
    return label(row.settings, keys) or row.name


def _metric_columns(rows: list[RunRow]) -> list[str]:
    seen = {key for row in rows for key in row.metrics}
    return [key for key in FIRST_METRICS if key in seen] + sorted(seen - set(FIRST_METRICS))


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else f"{value:.2f}"
            if abs(value) >= 0.01 or value == 0
            else f"{value:.2e}"
        )
    return str(value)


def constant_metrics(rows: list[RunRow]) -> dict[str, Any]:
    """Give back {metric: value} for the numbers every one of two or more runs has, each the same."""
    if len(rows) < 2:
        return {}
    keys = _metric_columns(rows)
    return {
        key: rows[0].metrics[key]
        for key in keys
        if all(key in row.metrics for row in rows) and len({repr(row.metrics[key]) for row in rows}) == 1
    }


def table(rows: list[RunRow]) -> tuple[list[str], list[list[Any]]]:
    """Give back (header, rows): run, status, every setting and every metric that is not the same in
    all runs, error. What all runs share is no column: comparison.md states it once."""
    setting_keys = varying_keys([row.settings for row in rows])
    constant = constant_metrics(rows)
    metric_keys = [key for key in _metric_columns(rows) if key not in constant]
    header = ["run", "status", *setting_keys, *metric_keys, "error"]
    body = [
        [
            row.name,
            row.status,
            *(row.settings.get(k, "") for k in setting_keys),
            *(row.metrics.get(k, "") for k in metric_keys),
            row.error,
        ]
        for row in rows
    ]
    return header, body


def headline_table(rows: list[RunRow]) -> tuple[list[str], list[list[Any]], str]:
    """Give back the Markdown table (a run per line, named by the keys that tell it apart, its status,
    the headline metrics, the error where there is one) and a sentence naming the headline numbers that
    are the same for every run, which get no column."""
    keys = naming_keys(rows)
    metrics = [key for key in HEADLINE_METRICS if any(row.metrics.get(key) is not None for row in rows)]
    same = [
        key for key in metrics if len(rows) > 1 and len({_cell(row.metrics.get(key)) for row in rows}) == 1
    ]
    metrics = [key for key in metrics if key not in same]
    errors = any(row.error for row in rows)
    header = ["run", "status", *(HEADLINE_METRICS[key] for key in metrics), *(["error"] if errors else [])]
    body = [
        [
            row_label(row, keys),
            row.status,
            *(row.metrics.get(k, "") for k in metrics),
            *([row.error] if errors else []),
        ]
        for row in rows
    ]
    sentence = ", ".join(f"{HEADLINE_METRICS[key]} {_cell(rows[0].metrics.get(key))}" for key in same)
    return header, body, (f"The same for every run: {sentence}.\n" if sentence else "")


def common_line(rows: list[RunRow]) -> str:
    """Give back the sentence stating the choices and overrides every run shares, or ""."""
    common = common_values([row.stated for row in rows])
    if not common or len(rows) < 2:
        return ""
    return "Common to all runs: " + ", ".join(f"{key}={value}" for key, value in common.items()) + ".\n"


REAL_DATA = {  # what a perfect model would get, from each run's summary (the same data set: the same numbers)
    "metrics_classifier_real_data_precision": "precision",
    "metrics_classifier_real_data_coverage": "coverage",
    "metrics_classifier_real_data_coverage_lowest_class": "lowest class coverage",
    "metrics_classifier_real_data_frechet_distance": "FD",
}


def real_data_line(rows: list[RunRow]) -> str:
    """Give back a sentence with the sample metrics of real images (training images judged as samples
    against the test images), or "" where no run has them."""
    for row in rows:
        if all(key in row.metrics for key in REAL_DATA):
            numbers = ", ".join(f"{name} {_cell(row.metrics[key])}" for key, name in REAL_DATA.items())
            return f"\nReal data (training images as samples, against the test images): {numbers}.\n"
    return ""


def group(rows: list[RunRow], by: list[str] | None = None) -> tuple[list[str], list[list[Any]]]:
    """Give back (header, rows) of completed runs grouped by `by` (default: every override but seed),
    with the count and the mean and sample standard deviation of each metric across the group."""
    completed = [row for row in rows if row.status == "completed"]
    keys = by if by else [key for key in naming_keys(completed) if key != "seed"]
    metric_keys = _metric_columns(completed)
    groups: dict[tuple, list[RunRow]] = {}
    for row in completed:
        groups.setdefault(tuple(row.settings.get(k, "") for k in keys), []).append(row)
    header = [*keys, "runs"] + [f"{m} {stat}" for m in metric_keys for stat in ("mean", "std")]
    body = []
    for values, members in groups.items():
        line: list[Any] = [*values, len(members)]
        for metric in metric_keys:
            numbers = [r.metrics[metric] for r in members if isinstance(r.metrics.get(metric), int | float)]
            line.append(statistics.fmean(numbers) if numbers else None)
            line.append(statistics.stdev(numbers) if len(numbers) > 1 else None)
        body.append(line)
    return header, body


def grouped_headline(header: list[str], body: list[list[Any]]) -> tuple[list[str], list[list[Any]]]:
    """Give back the grouped table turned on its side: a row per headline metric, a column per group,
    each cell "mean ± std" (the table a README shows)."""
    keys = header[: header.index("runs")]
    columns = [", ".join(f"{k}={v}" for k, v in zip(keys, line, strict=False)) or "all" for line in body]
    counts = [line[header.index("runs")] for line in body]
    rows = [["runs", *counts]]
    for key, name in HEADLINE_METRICS.items():
        if f"{key} mean" not in header:
            continue
        mean, std = header.index(f"{key} mean"), header.index(f"{key} std")
        cells = [_cell(line[mean]) + ("" if line[std] is None else f" ± {_cell(line[std])}") for line in body]
        same_everywhere = len(body) > 1 and len(set(cells)) == 1
        if any(line[mean] is not None for line in body) and not same_everywhere:
            rows.append([name, *cells])
    return ["", *columns], rows


def write_csv(path: Path, header: list[str], body: list[list[Any]]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in line] for line in body])


def markdown(header: list[str], body: list[list[Any]]) -> str:
    def clean(value: Any) -> str:
        return _cell(value).replace("|", "\\|").replace("\n", " ")[:200]

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(clean(v) for v in line) + " |" for line in body]
    return "\n".join(lines) + "\n"


def compare(
    folders: list[Path],
    out: Path | None = None,
    by: list[str] | None = None,
    data_root: str | None = None,
    device: str = "cpu",
    own_axes: bool = False,
) -> list[Path]:
    """Write the comparison of every run under `folders` into `out` (default: the first folder); the
    latent figure on shared axes, or with own_axes each panel on its own."""
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise VaeLabError(
            f"not a folder: {', '.join(missing)}. Give run or sweep folders such as "
            "outputs/multirun/<date>/<time>."
        )
    runs = find_runs(folders)
    if not runs:
        raise VaeLabError(
            f"no runs under {', '.join(map(str, folders))}: a run folder holds .hydra/config.yaml, "
            "as `python -m vae_lab.train` writes under outputs/."
        )
    out = out or folders[0]
    out.mkdir(parents=True, exist_ok=True)
    rows = [read_row(run, folders[0]) for run in runs]
    header, body = table(rows)
    write_csv(out / "comparison.csv", header, body)
    sections = [
        f"# Comparison of {len(rows)} runs\n",
        "Final test numbers in nats per image; every number the runs logged is in comparison.csv.\n",
        common_line(rows),
    ]
    header_md, body_md, same = headline_table(rows)
    sections += [markdown(header_md, body_md), same]
    reference = real_data_line(rows)
    if reference:
        sections.append(reference)
    constant = constant_metrics(rows)
    if constant:
        numbers = ", ".join(f"{key} {_cell(value)}" for key, value in constant.items())
        sections.append(f"\nThe same in every run, so no column of comparison.csv: {numbers}.\n")
    written = [out / "comparison.csv", out / "comparison.md"]
    grouped_header, grouped_body = group(rows, by)
    if by or any(count > 1 for count in (line[grouped_header.index("runs")] for line in grouped_body)):
        write_csv(out / "comparison_grouped.csv", grouped_header, grouped_body)
        written.append(out / "comparison_grouped.csv")
        sections += [
            "\n## Grouped across seeds (mean ± sample standard deviation)\n",
            markdown(*grouped_headline(grouped_header, grouped_body)),
            "Every grouped number is in comparison_grouped.csv.\n",
        ]
    (out / "comparison.md").write_text("\n".join(sections))
    written += draw_comparisons(rows, naming_keys(rows), out, data_root, device, own_axes)
    return written + write_rate_distortion(rows, out)


def write_rate_distortion(rows: list[RunRow], out: Path) -> list[Path]:
    """Where the runs hold two or more betas (vae_lab/rate_distortion.py): rate_distortion.md and its
    figures, rate_distortion.png and metrics_vs_beta.png."""
    found = rate_distortion.points(rows, naming_keys(rows))
    if not found:
        return []
    (out / "rate_distortion.md").write_text(rate_distortion.table(found))
    return [out / "rate_distortion.md", *rate_distortion_figures.draw(found, out)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vae-lab-compare", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep or run folders (searched recursively)")
    parser.add_argument("--out", type=Path, help="where to write (default: the first folder)")
    parser.add_argument(
        "--by",
        action="append",
        help="group by this key (repeatable); default: those naming the runs, less seed",
    )
    parser.add_argument("--data-root", help="where the runs' data set lies, when not where they were trained")
    parser.add_argument("--device", default="cpu", help="device for decoding the runs (default: cpu)")
    parser.add_argument(
        "--own-axes", action="store_true", help="each run's latent panel on its own axes (default: shared)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        written = compare(args.folders, args.out, args.by, args.data_root, args.device, args.own_axes)
    except VaeLabError as error:
        print(f"vae-lab-compare: {error}", file=sys.stderr)
        return 2
    print("Wrote:\n" + "\n".join(f"  {path}" for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
