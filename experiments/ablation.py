"""The article's ablation of the two loss terms: the sweep (reconstruction only, KL only, both),
then the side-by-side comparison of its three runs.

python experiments/ablation.py [overrides, e.g. trainer.epochs=1 hydra/launcher=basic]

On a CPU, the three jobs run at once with one thread each (joblib), 1.2x faster than one after
another with two threads each; on a machine with several GPUs, as many at once as there are GPUs,
each on its own; `hydra/launcher=basic` runs them one after another.
"""

import sys
import time
from pathlib import Path

from _launch import all_jobs_at_once, launch, train_the_classifier_once

from vae_lab.compare import compare

if __name__ == "__main__":
    given = [arg.partition("=")[2] for arg in sys.argv[1:] if arg.startswith("hydra.sweep.dir=")]
    sweep_dir = Path(given[-1] if given else time.strftime("outputs/multirun/%Y-%m-%d/%H-%M-%S"))
    parallel = all_jobs_at_once(3, sys.argv[1:])
    if parallel:
        train_the_classifier_once(sys.argv[1:])
    launch("-m", "experiment=ablation", *parallel, f"hydra.sweep.dir={sweep_dir}")
    written = compare([sweep_dir])
    print(f"Sweep folder: {sweep_dir}")
    print("Comparison: " + ", ".join(str(path) for path in written))
