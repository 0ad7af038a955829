"""Configs -> objects: the model, loss, optimiser, data set and logger that conf/ names by `_target_`."""

from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from vae_lab.errors import ConfigError, VaeLabError


def instantiate_node(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """instantiate() whose failures name the config key instead of raising a traceback."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, VaeLabError):
            raise error.__cause__ from None  # a loader's DataError or ConfigError says it best
        message = str(error).splitlines()[0]
        raise ConfigError(f"{key} could not be built from its config: {message}") from error


def build(cfg: DictConfig, device: torch.device):
    """Give back (model, loss, optimizer) built from their configs, after checking they fit together."""
    model = instantiate_node(cfg.model, "model").to(device)
    loss = instantiate_node(cfg.loss, "loss")
    if loss.requires_posterior and not model.is_variational:
        raise ConfigError(
            f"loss {type(loss).__name__} has a KL term, which needs an encoder distribution, but "
            f"model {type(model).__name__} is a deterministic autoencoder: use model=vae or "
            "model=mlp_vae with this loss, or loss=recon with this model."
        )
    optimizer = instantiate_node(cfg.optimizer, "optimizer", params=model.parameters())
    return model, loss, optimizer


def build_data(cfg: DictConfig, device: torch.device):
    """Give back the data set of cfg.data, on the device."""
    return instantiate_node(cfg.data, "data").to(device)
