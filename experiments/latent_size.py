"""The latent-size study: the article's autoencoder and VAE at latent sizes 2 to 32, three seeds each
(conf/experiment/latent_size.yaml), then their comparison: each evidence metric against the latent
size, one line per model (the autoencoder's draws from its fitted Gaussian as a line of their own).

python experiments/latent_size.py [overrides, e.g. hydra.launcher.n_jobs=6 device=cuda]

On a CPU, three jobs run at once with one thread each (joblib), as the ablation's do; on a machine
with several GPUs, as many at once as there are GPUs, each on its own.
"""

import sys
import time
from pathlib import Path

from _launch import all_jobs_at_once, launch, train_the_classifier_once

from vae_lab.compare import compare

if __name__ == "__main__":
    given = [arg.partition("=")[2] for arg in sys.argv[1:] if arg.startswith("hydra.sweep.dir=")]
    sweep_dir = Path(given[-1] if given else time.strftime("outputs/multirun/%Y-%m-%d/%H-%M-%S"))
    train_the_classifier_once(sys.argv[1:])  # before the jobs, which would each train it at once
    launch("-m", "experiment=latent_size", *all_jobs_at_once(3, sys.argv[1:]), f"hydra.sweep.dir={sweep_dir}")
    data_root = [arg.partition("=")[2] for arg in sys.argv[1:] if arg.startswith("data.root=")]
    written = compare([sweep_dir], data_root=data_root[-1] if data_root else None)
    print(f"Sweep folder: {sweep_dir}")
    print("Comparison: " + ", ".join(str(path) for path in written))
