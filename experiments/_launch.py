"""Run the Hydra app with a study's fixed overrides first; command-line overrides follow and win."""

import sys

from vae_lab.train import main


def launch(*overrides: str) -> None:
    sys.argv = [sys.argv[0], *overrides, *sys.argv[1:]]
    main()
