"""The fooling battery's table: every sample metric, scored on real MNIST test digits and on image sets
that must score worse (vae_lab/evaluation/fooling_battery.py), in the features of the digit classifier
that every run's evaluation uses (trained once and cached, as the evaluation trains it).

python experiments/fooling_battery.py [--data-root data] [--write docs/metrics.md]

Prints the Markdown table; --write replaces the table between the page's fooling-battery markers.
"""

import argparse
import os
import re
import subprocess
from pathlib import Path

from omegaconf import OmegaConf

from vae_lab.data import load_mnist
from vae_lab.evaluation.classifier import load_or_train
from vae_lab.evaluation.fooling_battery import battery_scores
from vae_lab.train import CONF_DIR

# (summary key, column, what it is meant to measure, better)
COLUMNS = [
    ("precision", "precision", "realism", "higher"),
    ("coverage", "coverage", "realism and variety", "higher"),
    ("coverage_lowest_class", "lowest class coverage", "variety over digits", "higher"),
    ("frechet_distance", "FD", "realism and variety", "lower"),
    ("density", "density (not in the tables)", "realism", "higher"),
]
BEGIN, END = "<!-- fooling-battery:begin -->", "<!-- fooling-battery:end -->"


def machine() -> str:
    """A few words for this CPU: its core count and model name."""
    names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    return f"a {os.cpu_count()}-core {names[0] if names else 'CPU'}"


def table(scores: dict, commit: str) -> str:
    lines = [
        "| set | " + " | ".join(column for _, column, _, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
        "| meant to measure | " + " | ".join(meant for _, _, meant, _ in COLUMNS) + " |",
        "| better | " + " | ".join(better for _, _, _, better in COLUMNS) + " |",
    ]
    for name, row in scores.items():
        cells = [f"{row[key]:.1f}" if key == "frechet_distance" else f"{row[key]:.3f}" for key, *_ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return (
        "\n".join(lines)
        + f"\n\n*1,000 images a set against 5,000 real test digits, k = 5; `python experiments/"
        f"fooling_battery.py` at commit {commit} on {machine()}.*"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--write", type=Path, help="a Markdown page holding the fooling-battery markers")
    args = parser.parse_args()
    data = load_mnist(args.data_root)
    settings = OmegaConf.load(CONF_DIR / "evaluation" / "default.yaml").classifier
    classifier, _, _ = load_or_train(data, args.data_root, settings, progress=False)
    scores = battery_scores(classifier, data)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    text = table(scores, commit.strip() or "unknown")
    print(text)
    if args.write:
        page = args.write.read_text()
        if BEGIN not in page or END not in page:
            raise SystemExit(f"{args.write}: no {BEGIN} ... {END} markers to write the table between")
        pattern = re.escape(BEGIN) + ".*?" + re.escape(END)
        args.write.write_text(re.sub(pattern, lambda _: f"{BEGIN}\n{text}\n{END}", page, flags=re.S))
        print(f"written into {args.write}")


if __name__ == "__main__":
    main()
