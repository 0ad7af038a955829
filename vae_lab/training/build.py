"""Configs -> objects: the model, loss, optimiser, data set and logger that conf/ names by `_target_`."""

from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vae_lab.errors import ConfigError, VaeLabError


def instantiate_node(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """instantiate() whose failures name the config key instead of raising a traceback."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, VaeLabError):
            raise error.__cause__ from None  # a loader's DataError or ConfigError says it best
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        cause = f" {type(error.__cause__).__name__}: {error.__cause__}" if error.__cause__ is not None else ""
        message = f"{lines[0]}{cause}" if cause else " ".join(lines[:2])
        raise ConfigError(
            f"{key} could not be built from its config: {message}. Its YAML's keys are passed to the "
            "constructor that _target_ names: give only the arguments it takes (docs/extending.md)."
        ) from error


def build(model_node: DictConfig, loss_node: DictConfig, optimizer_node: DictConfig, device: torch.device):
    """Give back (model, loss, optimizer) built from their configs (conf/model, conf/loss, conf/optimizer),
    after checking they fit together."""
    model = instantiate_node(model_node, "model").to(device)
    loss = instantiate_node(loss_node, "loss")
    if loss.requires_posterior and not model.is_variational:
        raise ConfigError(
            f"loss {type(loss).__name__} has a KL term, which needs an encoder distribution, but "
            f"model {type(model).__name__} is a deterministic autoencoder: use model=vae or "
            "model=mlp_vae with this loss, or loss=recon with this model."
        )
    # a key set to null is left out, so the constructor's own default applies (optimizer.eps=null
    # with optimizer._target_=torch.optim.SGD, which takes no eps)
    given = OmegaConf.create({key: value for key, value in optimizer_node.items() if value is not None})
    optimizer = instantiate_node(given, "optimizer", params=model.parameters())
    return model, loss, optimizer


def build_data(data_node: DictConfig, device: torch.device):
    """Give back the data set of its config (conf/data), on the device."""
    return instantiate_node(data_node, "data").to(device)


def check_model_fits_data(model, images: torch.Tensor) -> None:
    """Raise ConfigError, naming both shapes, where the model cannot encode the data's images and decode
    them back to their own shape: a decoding and one forward pass on one image, before any training.

    Both run in eval mode under a forked random state: the run's numbers are those it would have had
    without the check.
    """
    shape = "x".join(map(str, images.shape[1:]))
    was_training = model.training
    problem = None
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
            model.eval()
            made = tuple(model.decoder(torch.zeros(1, model.latent_dim, device=images.device)).shape[1:])
            if made != tuple(images.shape[1:]):
                problem = f"the model makes {'x'.join(map(str, made))} images, and the data's are {shape}"
            else:
                model(images[:1].float().div(255))
    except RuntimeError as error:  # torch's shape errors
        problem = f"the data's images are {shape}, and the model fails on one: {str(error).splitlines()[0]}"
    finally:
        model.train(was_training)
    if problem:
        raise ConfigError(
            f"the model does not fit the data: {problem}. Pick a model for these images (model=vae, ae, "
            "mlp_vae or mlp_ae for 1x28x28; model=vae_celeba for 3x64x64, or data.image_size and "
            "data.channels of the data), or set model.encoder and model.decoder to their shape."
        )
