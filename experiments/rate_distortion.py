"""The rate-distortion study: the article's conv VAE at each beta (the KL term's weight) of
conf/experiment/rate_distortion.yaml, then KL only (beta = infinity), at each latent size and seed; then
their comparison, with rate against distortion and each evidence metric against beta
(rate_distortion.png, metrics_vs_beta.png, rate_distortion.md).

python experiments/rate_distortion.py [--betas 0 0.1 1 10] [--latent 2 16] [--seeds 0 1 2] [overrides]

The betas sweep into <sweep folder>/beta, KL only into <sweep folder>/kl_only; hydra.sweep.dir=FOLDER
names the sweep folder (a sweep that stopped goes on from its checkpoints with trainer.resume=true).
On a CPU, the jobs run three at once with one thread each (joblib), as the ablation's do.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

from _launch import all_jobs_at_once, train_the_classifier_once

from vae_lab.compare import compare


def sweep(folder: Path, *overrides: str) -> None:
    command = [sys.executable, "-m", "vae_lab.train", "-m", "experiment=rate_distortion", *overrides]
    if subprocess.run([*command, f"hydra.sweep.dir={folder}"]).returncode != 0:
        raise SystemExit(f"the sweep into {folder} failed: its jobs' logs are in its folders")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--betas", type=float, nargs="+", default=None, help="default: the experiment's")
    parser.add_argument("--latent", type=int, nargs="+", default=None, help="default: 2 16")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2")
    # Hydra overrides (key=value) may stand anywhere, also after a list such as --seeds 0 1 2
    overrides = [arg for arg in sys.argv[1:] if "=" in arg and not arg.startswith("-")]
    args = parser.parse_args([arg for arg in sys.argv[1:] if arg not in overrides])
    given = [arg.partition("=")[2] for arg in overrides if arg.startswith("hydra.sweep.dir=")]
    overrides = [arg for arg in overrides if not arg.startswith("hydra.sweep.dir=")]
    sweep_dir = Path(given[-1] if given else time.strftime("outputs/multirun/%Y-%m-%d/%H-%M-%S"))
    chosen = [
        f"{key}={','.join(f'{value:g}' for value in values)}"
        for key, values in (("model.latent_dim", args.latent), ("seed", args.seeds))
        if values
    ]
    betas = [f"loss.kl_weight={','.join(f'{beta:g}' for beta in args.betas)}"] if args.betas else []
    parallel = all_jobs_at_once(3, overrides)
    train_the_classifier_once(["experiment=rate_distortion", *overrides])  # not once in each job at once
    sweep(sweep_dir / "beta", *parallel, *betas, *chosen, *overrides)
    sweep(sweep_dir / "kl_only", *parallel, "loss=kl", "loss.kl_weight=1", *chosen, *overrides)
    data_root = [arg.partition("=")[2] for arg in overrides if arg.startswith("data.root=")]
    written = compare([sweep_dir], data_root=data_root[-1] if data_root else None)
    print(f"Sweep folder: {sweep_dir}")
    print("Comparison: " + ", ".join(str(path) for path in written))
