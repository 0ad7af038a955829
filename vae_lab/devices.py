"""The torch device a run trains on, from its `device` key (auto, cpu, cuda, cuda:N), its place in a
sweep and its place in a data-parallel run."""

from typing import Optional

import torch

from vae_lab.errors import ConfigError


def resolve_device(
    name: str, job_number: Optional[int] = None, local_rank: Optional[int] = None
) -> torch.device:
    """Give back the torch device for `auto`, `cpu`, `cuda` or `cuda:N`.

    A job of a sweep (job_number given) asking for `auto` or `cuda` on a machine with several GPUs
    takes GPU job_number mod their count: the jobs that a launcher runs at once use every GPU, round
    robin. A process of a data-parallel run (local_rank given) takes GPU local_rank. `cuda:N` is always
    GPU N.
    """
    if name in ("auto", "cuda") and local_rank is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
    if name in ("auto", "cuda") and job_number is not None and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if count > 1:
            return torch.device(f"cuda:{job_number % count}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device={name!r} was asked for, but torch sees no CUDA device: use device=cpu or auto."
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N.") from None
