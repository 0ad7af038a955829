"""What a searching sweep (hydra/sweeper=optuna, experiment=search) needs besides the plugin itself.

The Optuna sweeper opens its study (storage: sqlite:///<sweep folder>/optuna.db) before the launcher
makes the sweep folder, so SQLite could not create the file there; MakeSweepFolder, a Hydra callback
that conf/experiment/search.yaml names, makes the folder first.
"""

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class MakeSweepFolder(Callback):
    """Make hydra.sweep.dir when the multirun starts, before the sweeper runs."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
