"""Burda et al. 2016 ("Importance Weighted Autoencoders", ICLR), Table 1, MNIST, one stochastic layer:
experiment=burda2015 trained as the VAE and as the IWAE at k = 1, 5 and 50, every run in a process of its
own and all at once; then the table beside the paper's numbers and the test bound against passes.

python experiments/burda2015.py [--out FOLDER] [--runs vae_k1 vae_k50 iwae_k50 ...] [--train-for-s S]
                                [overrides, e.g. device=cuda]
python experiments/burda2015.py --table FOLDER [--out FOLDER]

--train-for-s S stops training after S seconds of wall time (a stop signal: the checkpoint is saved),
then evaluates each run where it stopped: the table says how many of the 3,280 passes each run made.
Runs: vae_k1 (= iwae_k1), vae_k5, vae_k50 (the ELBO on the mean of k log weights), iwae_k5, iwae_k50.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from _launch import train_at_once, train_the_classifier_once
from omegaconf import OmegaConf

# Table 1 of the paper, MNIST, one stochastic layer: test NLL in nats (K = 5,000), the runs whose number is
# quoted; a run not listed here is tabulated without the paper's
PAPER = {"vae_k1": 86.76, "vae_k50": 86.35, "iwae_k50": 84.78}
# run -> (loss.bound, loss.samples): the VAE trains on the mean of the k log weights, the IWAE on the log
# of their mean; at k = 1 the two are the same objective
RUNS = {"vae_k1": ("elbo", 1), "vae_k5": ("elbo", 5), "vae_k50": ("elbo", 50), "iwae_k5": ("iwae", 5)}
RUNS["iwae_k50"] = ("iwae", 50)
PASSES = 3280  # 3^0 + 3^1 + ... + 3^7


def train_command(run_dir: Path, name: str, overrides: list[str]) -> list[str]:
    bound, k = RUNS[name]
    return [
        sys.executable,
        "-m",
        "vae_lab.train",
        "experiment=burda2015",
        f"loss.bound={bound}",
        f"loss.samples={k}",
        "trainer.progress=false",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


def run_row(run_dir: Path) -> dict | None:
    """Give back one run's numbers (None for a folder with no finished run)."""
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        return None
    summary = json.loads(summary_file.read_text())
    if summary.get("status") != "completed" or not summary.get("metrics"):
        return None
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    iwae = summary["metrics"]["iwae"]
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "run": run_dir.name,
        "bound": config.loss.bound,
        "k": int(config.loss.samples),
        "nll": iwae[f"nll_k{iwae['k']}"],
        "K": iwae["k"],
        "test_images": iwae["images"],
        "active_units": summary["metrics"]["latent"]["active_units"],
        "passes": len(history),
        "last_lr": history[-1].get("lr"),
        "test_bound": [record["test"]["total"] for record in history],  # -bound at k, per pass
        "train_s": round(sum(record["train_s"] for record in history)),
        "device": summary["device"],
    }


def unfinished(folder: Path) -> list[Path]:
    """The run folders under `folder` whose run has no evaluated summary (stopped, failed or killed)."""
    run_dirs = [path.parent.parent for path in sorted(folder.glob("*/.hydra/config.yaml"))]
    return [run_dir for run_dir in run_dirs if not run_row(run_dir)]


def write_table(folder: Path, out: Path) -> Path:
    """Write burda2015.md, .json and the bound against passes (burda2015_passes.png) into `out`."""
    runs = [row for path in sorted(folder.glob("*/summary.json")) if (row := run_row(path.parent))]
    runs.sort(key=lambda row: list(RUNS).index(row["run"]) if row["run"] in RUNS else len(RUNS))
    if not runs:
        raise SystemExit(f"no finished runs under {folder}")
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "| run | k | passes (of 3,280) | NLL (K, test images) | paper NLL | active units | train time |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in runs:
        paper = f"{PAPER[row['run']]:.2f}" if row["run"] in PAPER else "n/a"
        lines.append(
            f"| {row['bound'].upper() if row['bound'] == 'iwae' else 'VAE'} | {row['k']} | {row['passes']} "
            f"| {row['nll']:.2f} (K = {row['K']:,}, {row['test_images']:,}) | {paper} "
            f"| {row['active_units']} | {row['train_s']} s |"
        )
    for run_dir in unfinished(folder):
        lines.append(f"| {run_dir.name} | | | not evaluated: see {run_dir.name}.log | | | |")
    table = out / "burda2015.md"
    table.write_text(
        "# Burda et al. 2016, Table 1, MNIST, one stochastic layer: vae_lab beside the paper\n\n"
        "Test negative log-likelihood in nats per image, estimated by importance sampling with K draws.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    (out / "burda2015.json").write_text(json.dumps(runs, indent=2) + "\n")
    draw_passes(runs, out / "burda2015_passes.png")
    return table


def draw_passes(runs: list[dict], path: Path) -> None:
    """The test bound at each run's own k against passes (log axis), each paper NLL as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in runs:
        passes = range(1, len(row["test_bound"]) + 1)
        (line,) = axis.plot(passes, row["test_bound"], label=f"{row['run']}: minus its training bound")
        axis.scatter([len(row["test_bound"])], [row["nll"]], color=line.get_color(), marker="o", zorder=3)
        if row["run"] in PAPER:
            axis.axhline(PAPER[row["run"]], color=line.get_color(), linestyle="--", linewidth=0.8)
    axis.set_xscale("log")
    axis.set_xlabel("passes over the training set (the paper: 3,280)")
    axis.set_ylabel("test nats per image")
    axis.set_title(
        "lines: minus each run's training bound on the test split after each pass\n"
        "dots: NLL at K = 5,000 where the run stopped; dashed: the paper's NLL after 3,280 passes",
        fontsize=9,
    )
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))  # all five
    parser.add_argument("--train-for-s", type=float, default=None)
    parser.add_argument("--table", type=Path, default=None)
    overrides = [arg for arg in sys.argv[1:] if "=" in arg and not arg.startswith("-")]
    args = parser.parse_args([arg for arg in sys.argv[1:] if arg not in overrides])
    if args.table:
        print(write_table(args.table, args.out or args.table).read_text())
    else:
        out = args.out or Path(time.strftime("outputs/burda2015/%Y-%m-%d/%H-%M-%S"))
        train_the_classifier_once(["experiment=burda2015", *overrides])
        commands = {out / name: train_command(out / name, name, overrides) for name in args.runs}
        train_at_once(commands, args.train_for_s, out / "wall_times.json")
        print(write_table(out, args.out or out).read_text())
