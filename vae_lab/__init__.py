"""vae_lab: autoencoders and VAEs with Hydra configs."""

from vae_lab.runs import Run, load_run

__all__ = ["Run", "load_run"]
