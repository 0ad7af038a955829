"""Compare runs: one or more folders of runs -> a table and side-by-side figures.

    python -m vae_lab.compare outputs/multirun/<date>/<time> [more folders] [--out DIR] [--by KEY]

Every folder holding `.hydra/config.yaml` below the given folders is a run. Runs that failed or
never finished appear in the table with their status and error; figures use the finished ones,
read back through `load_run`.
"""

import argparse
import csv
import json
import logging
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.utils import instantiate

from vae_lab.errors import VaeLabError
from vae_lab.figures import plots
from vae_lab.figures.run_figures import figure_tensors
from vae_lab.runs import load_run
from vae_lab.training.run_folder import find_runs, flatten, read_metrics, read_summary

log = logging.getLogger("vae_lab.compare")
# where and how, not what, was run; the speed options (speed=..., speed.*) too
HIDDEN_OVERRIDES = {"data.root", "trainer.progress", "device"}
FIRST_METRICS = ["test_total", "test_recon", "test_kl"]
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
    "metrics_prior_samples_recognised_share": "samples recognised (confident and real)",
    "metrics_prior_samples_confident_share": "samples classified confidently",
    "metrics_prior_samples_coverage": "coverage",
    "metrics_prior_samples_density": "density",
    "metrics_prior_samples_coverage_lowest_class": "lowest class coverage",
    "metrics_prior_samples_classes_covered": "digits covered",
    "metrics_prior_samples_frechet_distance": "FD",
    "metrics_latent_holes_prior_hole_mass": "prior mass in holes",
    "metrics_latent_holes_prior_hole_mass_upper": "prior mass in holes, plain reading (upper)",
    "metrics_latent_holes_prior_kl_q_p": "KL(q(z)||p(z))",
    "metrics_latent_holes_fitted_gaussian_hole_mass": "holes under fitted Gaussian",
    "metrics_fitted_gaussian_samples_recognised_share": "fitted-Gaussian samples recognised",
    "metrics_fitted_gaussian_samples_coverage": "fitted-Gaussian coverage",
}


@dataclass
class RunRow:
    """One run as the table shows it."""

    path: Path
    name: str
    overrides: dict[str, str]
    status: str
    error: str
    metrics: dict[str, float | None]


def read_overrides(run_dir: Path) -> dict[str, str]:
    """Give back the run's command-line and sweep overrides as {key: value}, Hydra's own left out."""
    path = run_dir / ".hydra" / "overrides.yaml"
    entries = yaml.safe_load(path.read_text()) if path.exists() else []
    overrides = {}
    for entry in entries or []:
        key, _, value = str(entry).partition("=")
        key = key.lstrip("+~")
        if not key.startswith(("hydra.", "speed")) and key not in HIDDEN_OVERRIDES:
            overrides[key] = value
    return overrides


def flatten_numbers(data: dict[str, Any]) -> dict[str, float | None]:
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
        metrics = flatten_numbers({k: v for k, v in summary.items() if k not in ("status", "error")})
    try:
        name = str(run_dir.relative_to(base)) if run_dir != base else run_dir.name
    except ValueError:
        name = str(run_dir)
    return RunRow(run_dir, name, read_overrides(run_dir), status, error, metrics)


def varying_keys(rows: list[RunRow]) -> list[str]:
    keys = sorted({key for row in rows for key in row.overrides})
    return [key for key in keys if len({row.overrides.get(key, "") for row in rows}) > 1]


def label(row: RunRow, keys: list[str]) -> str:
    """Name a run by the overrides that tell it apart from the others."""
    parts = [f"{key}={row.overrides[key]}" for key in keys if key in row.overrides]
    return ", ".join(parts) or row.name


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


def table(rows: list[RunRow]) -> tuple[list[str], list[list[Any]]]:
    """Give back (header, rows): run, status, every override, every metric, error."""
    override_keys = sorted({key for row in rows for key in row.overrides})
    metric_keys = _metric_columns(rows)
    header = ["run", "status", *override_keys, *metric_keys, "error"]
    body = [
        [
            row.name,
            row.status,
            *(row.overrides.get(k, "") for k in override_keys),
            *(row.metrics.get(k, "") for k in metric_keys),
            row.error,
        ]
        for row in rows
    ]
    return header, body


def headline(header: list[str], body: list[list[Any]]) -> tuple[list[str], list[list[Any]]]:
    """Give back the table's run, status, override and headline-metric columns, and the error."""
    keep = [
        i
        for i, name in enumerate(header)
        if not name.startswith(
            ("test_", "train_", "metrics_", "epochs", "wall_time", "threads", "peak_memory", "resumed_after")
        )
    ]
    keep += [header.index(key) for key in HEADLINE_METRICS if key in header]
    keep = sorted(
        set(keep),
        key=lambda i: (
            header[i] == "error",
            i if header[i] not in HEADLINE_METRICS else 1000 + list(HEADLINE_METRICS).index(header[i]),
        ),
    )
    names = [HEADLINE_METRICS.get(header[i], header[i]) for i in keep]
    return names, [[line[i] for i in keep] for line in body]


REAL_DATA = {  # what a perfect model would get, from each run's summary (the same data set: the same numbers)
    "metrics_classifier_real_data_coverage": "coverage",
    "metrics_classifier_real_data_density": "density",
    "metrics_classifier_real_data_coverage_lowest_class": "lowest class coverage",
    "metrics_classifier_real_data_confident_share": "classified confidently",
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
    keys = by if by else sorted({k for row in completed for k in row.overrides} - {"seed"})
    metric_keys = _metric_columns(completed)
    groups: dict[tuple, list[RunRow]] = {}
    for row in completed:
        groups.setdefault(tuple(row.overrides.get(k, "") for k in keys), []).append(row)
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
        if any(line[mean] is not None for line in body):
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


def _test_data(run, data_root: str | None, cache: dict):
    data_cfg = run.config.data.copy()
    data_cfg.limit = None  # figures always use the whole test split
    if data_root:
        data_cfg.root = data_root
    key = json.dumps({k: str(v) for k, v in data_cfg.items()}, sort_keys=True)
    if key not in cache:
        cache[key] = instantiate(data_cfg)
    return cache[key]


def draw_comparisons(rows: list[RunRow], out: Path, data_root: str | None, device: str) -> list[Path]:
    """Draw the side-by-side figures of the completed runs; give back the files written.

    Longer than a screen: one short block per comparison figure, in the order they are listed.
    """
    completed = [row for row in rows if row.status == "completed"]
    keys = varying_keys(rows)
    written: list[Path] = []
    curves = [
        (
            label(r, keys),
            [m["epoch"] for m in ms],
            {p: [m["test"][p] for m in ms] for p in ("total", "recon", "kl")},
        )
        for r in rows
        if (ms := read_metrics(r.path))
    ]
    if curves:
        written.append(plots.plot_curves(curves, out / "curves.png"))
    written += _draw_metric_against_keys(completed, keys, out)

    latents, recons, samples, manifolds = [], [], [], []
    cache: dict = {}
    test_inputs = class_names = test_labels = values = None
    for row in completed:
        try:
            run = load_run(row.path, device=device)
            data = _test_data(run, data_root, cache)
        except VaeLabError as error:
            log.warning(f"figures skip {row.name}: {error}")
            continue
        data = data.to(torch.device(device))
        tensors = figure_tensors(run.model, data, seed=0, samples=10)  # the run's own figures, ten of each
        name = label(row, keys)
        latents.append((name, tensors.test_codes.cpu()))
        recons.append((name, tensors.reconstructions.cpu()))
        samples.append((name, tensors.samples.cpu()))
        if tensors.manifold is not None:
            manifolds.append((name, tensors.manifold.cpu()))
            values = tensors.manifold_values
        test_inputs, test_labels, class_names = (
            tensors.test_inputs.cpu(),
            data.test_labels.cpu(),
            data.class_names,
        )
    if latents:
        written.append(
            plots.plot_latent_comparison(latents, test_labels, class_names, out / "latent_comparison.png")
        )
        written.append(
            plots.plot_image_rows(
                [("test input", test_inputs), *recons],
                out / "reconstructions_comparison.png",
                "reconstructions of test images",
            )
        )
        written.append(
            plots.plot_image_rows(samples, out / "samples_comparison.png", "decoded draws from N(0, I)")
        )
    if manifolds:
        written.append(plots.plot_manifold_comparison(manifolds, values, out / "manifold_comparison.png"))
    return written


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _draw_metric_against_keys(completed: list[RunRow], keys: list[str], out: Path) -> list[Path]:
    """For each swept numeric key but the seed: final test metrics against it, a line per other setting."""
    written = []
    for key in keys:
        if key == "seed" or any(_as_number(r.overrides.get(key, "")) is None for r in completed):
            continue
        others = [k for k in keys if k not in (key, "seed")]
        lines: dict[str, dict[str, tuple[list, list, list]]] = {}
        for metric in FIRST_METRICS:
            by_line: dict[str, dict[float, list[float]]] = {}
            for row in completed:
                if row.metrics.get(metric) is not None:
                    points = by_line.setdefault(label(row, others) if others else "", {})
                    points.setdefault(_as_number(row.overrides[key]), []).append(row.metrics[metric])
            if by_line:
                lines[metric] = {
                    name: (
                        sorted(points),
                        [statistics.fmean(points[x]) for x in sorted(points)],
                        [statistics.stdev(points[x]) if len(points[x]) > 1 else 0.0 for x in sorted(points)],
                    )
                    for name, points in by_line.items()
                }
        if lines:
            written.append(plots.plot_metric_against_key(key, lines, out / f"metrics_vs_{key}.png"))
    return written


def compare(
    folders: list[Path],
    out: Path | None = None,
    by: list[str] | None = None,
    data_root: str | None = None,
    device: str = "cpu",
) -> list[Path]:
    """Write the comparison of every run under `folders` into `out` (default: the first folder)."""
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
        markdown(*headline(header, body)),
    ]
    reference = real_data_line(rows)
    if reference:
        sections.append(reference)
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
    written += draw_comparisons(rows, out, data_root, device)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vae-lab-compare", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep or run folders (searched recursively)")
    parser.add_argument("--out", type=Path, help="where to write (default: the first folder)")
    parser.add_argument(
        "--by", action="append", help="group by this override key (repeatable); default: all but seed"
    )
    parser.add_argument("--data-root", help="where the runs' data set lies, when not where they were trained")
    parser.add_argument("--device", default="cpu", help="device for decoding the runs (default: cpu)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        written = compare(args.folders, args.out, args.by, args.data_root, args.device)
    except VaeLabError as error:
        print(f"vae-lab-compare: {error}", file=sys.stderr)
        return 2
    print("Wrote:\n" + "\n".join(f"  {path}" for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
