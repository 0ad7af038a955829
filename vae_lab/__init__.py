"""vae_lab: autoencoders and VAEs with Hydra configs."""

from vae_lab.pretrained import load_pretrained
from vae_lab.runs import Run, load_run

__all__ = ["Run", "load_pretrained", "load_run"]
