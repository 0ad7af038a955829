"""Configs of run folders, checkpoints and command lines written in an earlier layout, read in today's:
a likelihood named by a string, the speed options inside the model's config."""

from vae_lab.errors import ConfigError

# conf/loss/*.yaml before likelihoods were picked by _target_: `likelihood: gaussian` and
# `gaussian_variance: V` beside the weights. Run folders and checkpoints written then are read through it.
LEGACY_LIKELIHOODS = {
    "bernoulli": lambda variance: {"_target_": "vae_lab.losses.BernoulliLikelihood"},
    "gaussian": lambda variance: {"_target_": "vae_lab.losses.GaussianLikelihood", "variance": variance},
}


def upgrade_legacy_loss(loss: dict) -> dict:
    """Give back a loss config of the first format (a likelihood's name) in today's (its _target_ node)."""
    if not isinstance(loss.get("likelihood"), str):
        return loss
    upgraded = {key: value for key, value in loss.items() if key not in ("likelihood", "gaussian_variance")}
    name, variance = loss["likelihood"], loss.get("gaussian_variance", 0.01)
    if name not in LEGACY_LIKELIHOODS:
        raise ConfigError(f"loss.likelihood={name!r} is not allowed: it must be one of bernoulli, gaussian.")
    return upgraded | {"likelihood": LEGACY_LIKELIHOODS[name](variance)}


# The speed options' keys before they had a config group of their own (conf/speed), by today's key
LEGACY_SPEED_KEYS = {
    "model.encoder.fast_dropout": "speed.fast_dropout",
    "model.encoder.fused_blocks": "speed.fused_blocks",
    "model.decoder.fast_transpose": "speed.fast_transpose",
    "model.decoder.one_channel_kernel": "speed.one_channel_kernel",
    "trainer.channels_last": "speed.channels_last",
    "trainer.compile": "speed.compile",
    "trainer.precision": "speed.precision",
    "trainer.keep_freed_memory": "speed.keep_freed_memory",
}


def split_legacy_speed(model: dict) -> tuple[dict, dict]:
    """Give back (a model config of a run written while the speed options sat in it, without them: the
    plain model's config, which is what it describes; those options by today's names, {} if none)."""
    upgraded, speed = dict(model), {}
    for old, new in LEGACY_SPEED_KEYS.items():
        if not old.startswith("model."):
            continue  # the trainer's: never part of a model config
        _, part, name = old.split(".")
        if isinstance(upgraded.get(part), dict) and name in upgraded[part]:
            speed[new.removeprefix("speed.")] = upgraded[part][name]
            upgraded[part] = {key: value for key, value in upgraded[part].items() if key != name}
    return upgraded, speed


def upgrade_legacy_model(model: dict) -> dict:
    """Give back a model config without the speed options it may hold (split_legacy_speed)."""
    return split_legacy_speed(model)[0]


def upgrade_legacy_overrides(arguments: list[str]) -> list[str]:
    """Give back command-line overrides with earlier keys in today's spelling:
    loss.likelihood=gaussian -> loss/likelihood=gaussian,
    loss.gaussian_variance=V -> loss.likelihood.variance=V,
    model.encoder.fused_blocks=false -> speed.fused_blocks=false (and the other speed options)."""
    renamed = {
        "loss.likelihood": "loss/likelihood",
        "loss.gaussian_variance": "loss.likelihood.variance",
        **LEGACY_SPEED_KEYS,
    }
    upgraded = []
    for argument in arguments:
        key, equals, value = argument.partition("=")
        upgraded.append(f"{renamed[key]}={value}" if equals and key in renamed else argument)
    return upgraded
