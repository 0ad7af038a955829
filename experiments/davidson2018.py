"""The Gaussian VAE rows of Davidson et al. 2018 ("Hyperspherical Variational Auto-Encoders", UAI 2018,
Table 1) on dynamically binarised MNIST: experiment=davidson2018 at latent sizes 2, 5 and 20, three seeds
each, every run in a process of its own and all at once; then the table beside the paper's numbers.

python experiments/davidson2018.py [--out FOLDER] [--latent 2 5 20] [--seeds 0 1 2] [--train-for-s S]
                                   [overrides, e.g. device=cuda]
python experiments/davidson2018.py --table FOLDER [FOLDER ...] [--out FOLDER]

--train-for-s S stops training after S seconds of wall time (a stop signal: the checkpoint is saved),
then evaluates each run's best epoch so far; without it, each run trains until early stopping ends it.
--table writes the table of runs already made (every run folder under the folders given).
--estimator-check RUN gives the log-likelihood estimate of a run's kept weights at K = 1 to 5,000 on
1,000 stratified test images: how far the estimate at the paper's K = 500 is from a larger K's.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

from _launch import train_at_once, train_the_classifier_once
from omegaconf import OmegaConf

# Table 1 of the paper, the N-VAE rows: log-likelihood, reconstruction (its RE) and KL, nats per image;
# its ELBO L[q] is RE - KL
PAPER = {2: (-135.73, -129.84, 7.24), 5: (-110.21, -100.16, 12.82), 20: (-88.90, -71.29, 23.50)}


def train_command(run_dir: Path, latent: int, seed: int, overrides: list[str], *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vae_lab.train",
        "experiment=davidson2018",
        f"model.latent_dim={latent}",
        f"seed={seed}",
        "trainer.progress=false",
        f"hydra.run.dir={run_dir}",
        *overrides,
        *extra,
    ]


def run_all(out: Path, latents: list[int], seeds: list[int], train_for_s: float | None, overrides: list[str]):
    """Train every (latent size, seed) at once; past train_for_s, stop them and evaluate their best epoch."""
    train_the_classifier_once(["experiment=davidson2018", *overrides])  # not once in each job at once
    commands = {
        out / f"d{latent}_seed{seed}": train_command(out / f"d{latent}_seed{seed}", latent, seed, overrides)
        for latent in latents
        for seed in seeds
    }
    train_at_once(commands, train_for_s, out / "wall_times.json")


def run_row(run_dir: Path) -> dict | None:
    """Give back one run's numbers (None for a folder with no finished run)."""
    summary_file = run_dir / "summary.json"
    if not summary_file.is_file():
        return None
    summary = json.loads(summary_file.read_text())
    if summary.get("status") != "completed" or not summary.get("metrics"):
        return None
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    metrics = summary["metrics"]
    iwae, likelihood = metrics["iwae"], metrics["likelihood"]
    k = iwae["k"]
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    walls_file = run_dir.parent / "wall_times.json"
    wall_times = json.loads(walls_file.read_text()) if walls_file.is_file() else {}
    return {
        "run": str(run_dir),
        "latent_dim": int(config.model.latent_dim),
        "seed": int(config.seed),
        "log_likelihood": -iwae[f"nll_k{k}"],  # log p(x) by importance sampling, K draws per image
        "k": k,
        "test_images": iwae["images"],
        "elbo": -likelihood["negative_elbo"],
        "reconstruction": -likelihood["recon"],
        "kl": likelihood["kl"],
        "epochs_trained": len(history),
        "best_epoch": summary["epochs"],
        "best_validation": min(r["validation"]["total"] for r in history if "validation" in r),
        "wall_time_s": wall_times.get(run_dir.name, summary["wall_time_s"]),  # training and evaluation
        "device": summary["device"],
    }


def estimator_check(run_dir: Path, ks=(1, 10, 100, 500, 1000, 5000), images: int = 1000) -> dict:
    """Give back -log p(x) estimated with each K in ks, nested from the same draws, for a run's kept
    weights on a stratified subset of its test split."""
    import torch

    from vae_lab import load_run
    from vae_lab.data import load_mnist
    from vae_lab.evaluation import inference, metrics
    from vae_lab.losses import BernoulliLikelihood

    run = load_run(run_dir)  # the weights early stopping kept
    config, model = run.config, run.model
    data = load_mnist(config.data.root, binarize=config.data.binarize, validation=config.data.validation)
    subset = metrics.stratified_subset(data.test_labels, images)
    torch.manual_seed(0)
    started = time.perf_counter()
    log_weights = []
    for chunk in subset.split(100):
        draws = inference.importance_draws(
            model.eval(), data.test_images[chunk], max(ks), BernoulliLikelihood(), max_decodes=50000
        )
        log_weights.append(metrics.importance_log_weights(draws.log_px_z, draws.z, draws.mean, draws.log_var))
    bounds = metrics.iwae_bounds(torch.cat(log_weights, 1), tuple(ks))
    return {
        "run": str(run_dir),
        "epoch": run.summary["epochs"],
        "images": len(subset),
        "nll": {k: -bound for k, bound in bounds.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def shown(values: list[float]) -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.2f}" if sd is None else f"{mean:.2f} ± {sd:.2f}"


def write_table(folders: list[Path], out: Path) -> Path:
    """Write davidson2018.md, .csv and .json into `out`: per latent size, mean ± sd over seeds beside
    the paper's numbers."""
    runs = sorted(
        (row for folder in folders for path in folder.rglob("summary.json") if (row := run_row(path.parent))),
        key=lambda row: (row["latent_dim"], row["seed"]),
    )
    if not runs:
        raise SystemExit(f"no finished runs under {', '.join(map(str, folders))}")
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "| d | runs | log-likelihood (K, test images) | paper | ELBO | paper | reconstruction | paper "
        "| KL | paper | epochs trained (best) | wall time per run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for latent in sorted({row["latent_dim"] for row in runs}):
        rows = [row for row in runs if row["latent_dim"] == latent]
        ll, re, kl = PAPER.get(latent, (math.nan, math.nan, math.nan))
        lines.append(
            f"| {latent} | {len(rows)} | {shown([r['log_likelihood'] for r in rows])} (K = {rows[0]['k']}, "
            f"{rows[0]['test_images']:,}) | {ll:.2f} | {shown([r['elbo'] for r in rows])} | {re - kl:.2f} "
            f"| {shown([r['reconstruction'] for r in rows])} | {re:.2f} "
            f"| {shown([r['kl'] for r in rows])} | {kl:.2f} "
            f"| {', '.join(str(r['epochs_trained']) + ' (' + str(r['best_epoch']) + ')' for r in rows)} "
            f"| {', '.join(str(round(r['wall_time_s'])) + ' s' for r in rows)} |"
        )
    table = out / "davidson2018.md"
    table.write_text(
        "# Davidson et al. 2018, Table 1, Gaussian VAE: vae_lab beside the paper\n\n"
        "Nats per image on the test split, mean ± sd over seeds; ELBO = reconstruction - KL.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    header = list(runs[0])
    (out / "davidson2018.csv").write_text(
        "\n".join([",".join(header)] + [",".join(str(row[name]) for name in header) for row in runs]) + "\n"
    )
    (out / "davidson2018.json").write_text(json.dumps(runs, indent=2) + "\n")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--latent", type=int, nargs="+", default=[2, 5, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-for-s", type=float, default=None)
    parser.add_argument("--table", type=Path, nargs="+", default=None)
    parser.add_argument("--estimator-check", type=Path, default=None)
    # Hydra overrides (key=value) may stand anywhere, also after a list such as --seeds 0 1 2
    overrides = [arg for arg in sys.argv[1:] if "=" in arg and not arg.startswith("-")]
    args = parser.parse_args([arg for arg in sys.argv[1:] if arg not in overrides])
    if args.estimator_check:
        print(json.dumps(estimator_check(args.estimator_check)))
    elif args.table:
        print(write_table(args.table, args.out or args.table[0]).read_text())
    else:
        out = args.out or Path(time.strftime("outputs/davidson2018/%Y-%m-%d/%H-%M-%S"))
        run_all(out, args.latent, args.seeds, args.train_for_s, overrides)
        print(write_table([out], out).read_text())
