"""The checkpoint, defined once: what a run saves to go on after a kill, its file format, and resuming.

A checkpoint holds the weights, the optimiser, every random state, the per-epoch history and, when a
stop signal arrived mid-epoch, the place in that epoch; with them a resumed run ends bit-identical to
one that was never stopped (docs/reliability.md).
"""

import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import torch

from vae_lab.errors import ConfigError, RunFolderError
from vae_lab.files import write_atomically
from vae_lab.legacy_configs import split_legacy_speed, upgrade_legacy_loss
from vae_lab.operational import is_operational
from vae_lab.speed.options import SpeedOptions, what_differs_means
from vae_lab.training.run_folder import CHECKPOINT_FILE, CONFIG_FILE, flatten

log = logging.getLogger("vae_lab")
# 1: the plain dict written before the format was versioned (the same keys); 2: with format_version
FORMAT_VERSION = 2


@dataclass
class EpochPosition:
    """How far the epoch under way has come; a checkpoint saved mid-epoch holds it, to go on from there."""

    epoch: int  # the epoch under way, from 1
    order_rng: torch.Tensor  # the order generator's state before this epoch's permutation was drawn
    step: int = 0  # batches done
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # (total, recon, kl) x images so far
    has_kl: bool = False
    term_sums: dict[str, float] = field(default_factory=dict)  # a loss's own terms x images so far
    train_s: float = 0.0  # training time spent on this epoch so far


@dataclass
class Checkpoint:
    """Everything a run needs to go on exactly where it stopped."""

    model: dict[str, torch.Tensor]  # state_dict
    optimizer: dict[str, Any]  # state_dict
    epoch: int  # finished epochs
    history: list[dict[str, Any]]  # one record per finished epoch, as metrics.jsonl holds them
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor]  # one state per CUDA device; [] where torch saw none
    order_rng: torch.Tensor  # the generator that orders the training images
    config: dict[str, Any]  # resume_key of the run: a resume must match it
    hydra_files: dict[str, str]  # the run's .hydra/*.yaml, put back when a later command rewrites them
    position: Optional[EpochPosition] = None  # where in an unfinished epoch; None at an epoch's end
    speed: Optional[dict[str, Any]] = None  # the speed options it trained with (conf/speed): not in `config`
    format_version: int = FORMAT_VERSION

    def restore(self, model, optimizer, order_generator: torch.Generator) -> None:
        """Load the weights, the optimiser and every random state into a freshly built run."""
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        order_generator.set_state(self.order_rng)
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.cuda_rng)


def cuda_rng_states() -> list[torch.Tensor]:
    """Give back the random state of each CUDA device ([] where torch sees none)."""
    return torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []


def save(run_dir: Path, checkpoint: Checkpoint) -> None:
    """Write the checkpoint atomically: a kill mid-write leaves the previous one whole."""
    # plain tensors, lists and dicts (no copies of the weights): loadable with weights_only=True
    state = {f.name: getattr(checkpoint, f.name) for f in fields(Checkpoint)}
    state["position"] = asdict(checkpoint.position) if checkpoint.position is not None else None
    write_atomically(Path(run_dir) / CHECKPOINT_FILE, lambda temporary: torch.save(state, temporary))


def checkpoint_of(
    step,
    history: list[dict[str, Any]],
    generator: torch.Generator,
    settings,
    position: Optional[EpochPosition],
) -> Checkpoint:
    """Give back the run's checkpoint now: the weights and optimiser of `step` (loop.TrainStep), every
    random state, the history, the place, and what `settings` (loop.FitSettings) records of the run."""
    return Checkpoint(
        model=step.model.state_dict(),
        optimizer=step.optimizer.state_dict(),
        epoch=len(history),
        history=history,
        torch_rng=torch.get_rng_state(),
        cuda_rng=cuda_rng_states(),
        order_rng=generator.get_state(),
        config=settings.resume_config,
        hydra_files=settings.hydra_files,
        position=position,
        speed=settings.speed,
    )


def load(run_dir: Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Give back a run's checkpoint; a damaged file or an unknown format gives a RunFolderError naming it."""
    path = Path(run_dir) / CHECKPOINT_FILE
    try:
        # weights_only: no code runs from a checkpoint file
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # truncated: RuntimeError or EOFError; overwritten: UnpicklingError
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunFolderError(
            f"{path} cannot be read ({reason}): the file is truncated or corrupt. vae_lab writes "
            "checkpoints atomically, so it was damaged afterwards (a copy cut short?). Copy it again, "
            "or start the run afresh in a new folder."
        ) from error
    return from_state(state, path)


def from_state(state: Any, path: Path) -> Checkpoint:
    """Give back the Checkpoint of a loaded file's contents, of this format or the unversioned first one."""
    version = state.get("format_version", 1) if isinstance(state, dict) else None
    names = {f.name for f in fields(Checkpoint)}
    required = names - {"position", "speed", "format_version"}
    if version not in (1, FORMAT_VERSION) or not required <= state.keys():
        raise RunFolderError(
            f"{path} is not a checkpoint this vae_lab can read (format {version!r}, this version reads "
            f"1 to {FORMAT_VERSION}): it was written by another version of vae_lab, or is another file. "
            "Evaluate it with the vae_lab that wrote it, or start the run afresh in a new folder."
        )
    kept = {key: value for key, value in state.items() if key in names}
    position = kept.get("position")
    kept["position"] = EpochPosition(**position) if position else None
    if version == 1 and isinstance(kept["config"].get("loss"), dict):  # its likelihood was a name then
        kept["config"] = kept["config"] | {"loss": upgrade_legacy_loss(kept["config"]["loss"])}
    if isinstance(kept["config"].get("model"), dict) and kept.get("speed") is None:
        # written while the layer options sat in the model's config: they are its speed options
        model, speed = split_legacy_speed(kept["config"]["model"])
        kept["config"] = kept["config"] | {"model": model}
        kept["speed"] = speed or None
    kept["format_version"] = FORMAT_VERSION
    return Checkpoint(**kept)


def resume_key(kept: dict[str, Any]) -> dict[str, Any]:
    """Give back the parts of a run's resolved config that it must keep to be resumed: what its numbers
    are of.

    No key that says how a run ran (vae_lab/operational.py: the data's folder, the speed options, ...) is
    among them: a resume with other speed options goes on, and says how far its numbers then depart from
    an uninterrupted run's (`resume_point`). Nor is trainer.epochs: a finished run goes on for more."""
    data = {key: value for key, value in kept["data"].items() if not is_operational(f"data.{key}")}
    trainer = {"batch_size": kept["trainer"]["batch_size"]}
    # keys absent from older runs, kept only where set (their checkpoints then resume)
    if kept["trainer"].get("kl_warmup_epochs") is not None:
        trainer["kl_warmup_epochs"] = kept["trainer"]["kl_warmup_epochs"]
    if (kept["trainer"].get("lr_stages") or {}).get("base") is not None:
        trainer["lr_stages"] = kept["trainer"]["lr_stages"]
    optimizer = dict(kept["optimizer"])
    if optimizer.get("eps", 0) is None:
        del optimizer["eps"]
    return {
        "model": kept["model"],
        "loss": kept["loss"],
        "optimizer": optimizer,
        "data": data,
        "seed": kept["seed"],
        "trainer": trainer,
    }


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Give back 'key: saved -> current' for every key whose value differs between two config trees."""
    saved_flat, current_flat = flatten(saved), flatten(current)
    missing = "(absent)"
    return [
        f"{key}: {saved_flat.get(key, missing)!r} in the checkpoint, {current_flat.get(key, missing)!r} now"
        for key in sorted(saved_flat.keys() | current_flat.keys())
        if saved_flat.get(key, missing) != current_flat.get(key, missing)
    ]


class FolderInUse(RunFolderError):
    """The run folder already holds a run that this command must not overwrite."""


def resume_point(
    run_dir: Path, key: dict[str, Any], speed: SpeedOptions, resume: bool, must_exist: bool
) -> Optional[Checkpoint]:
    """Give back the checkpoint to go on from, or None to start afresh; never start over a run. key: the
    run's `resume_key`, which the checkpoint's must match; speed: the options it goes on with."""
    if not (run_dir / CHECKPOINT_FILE).exists():
        if must_exist:
            raise ConfigError(
                f"trainer.resume=true, but {run_dir} holds no {CHECKPOINT_FILE}: point hydra.run.dir at "
                "the folder of the run to go on with, e.g. `python -m vae_lab.train <its overrides> "
                "trainer.resume=true hydra.run.dir=outputs/2026-11-25/14-03-12`."
            )
        return None
    if not resume:
        raise FolderInUse(
            f"{run_dir} already holds a run ({CHECKPOINT_FILE} is there) and was left as it was: add "
            "trainer.resume=true to go on with it, or leave hydra.run.dir out to start a new run."
        )
    checkpoint = load(run_dir)
    differences = config_differences(checkpoint.config, key)
    if differences:
        raise ConfigError(
            f"cannot resume {run_dir}: its checkpoint was made with a different config: "
            f"{'; '.join(differences)}. Resume with the checkpoint's values, or start a new run."
        )
    warn_of_other_speed_options(checkpoint, speed)
    return checkpoint


def warn_of_other_speed_options(checkpoint: Checkpoint, now: SpeedOptions) -> None:
    """Say so where a run goes on with other speed options than its checkpoint's: it goes on, but not
    bit-identically to a run that was never stopped (docs/reliability.md)."""
    if checkpoint.speed is None:
        return
    saved = checkpoint.speed
    current = {name: value for name, value in now.as_dict().items() if name in saved}
    differences = config_differences({"speed": saved}, {"speed": current})
    if differences:
        differing = {name for name in saved if saved[name] != current[name]}
        log.warning(
            f"resuming with other speed options than the checkpoint's ({'; '.join(differences)}): "
            f"{what_differs_means(differing)}; the run will not end bit-identical to one "
            "that was never stopped. Resume with the checkpoint's speed options for that."
        )


def read_hydra_files(run_dir: Path) -> dict[str, str]:
    """Give back the text of the run's .hydra/*.yaml files, by name."""
    folder = Path(run_dir) / CONFIG_FILE.parent
    return {path.name: path.read_text() for path in sorted(folder.glob("*.yaml"))}


def restore_hydra_files(run_dir: Path, files: dict[str, str]) -> None:
    """Put back .hydra/*.yaml files that Hydra overwrote when a later command reused the folder."""
    for name, text in files.items():

        def write(temporary: str, text: str = text) -> None:
            Path(temporary).write_text(text)

        write_atomically(Path(run_dir) / CONFIG_FILE.parent / name, write)


def put_back_hydra_files(run_dir: Path) -> None:
    """Put back the .hydra files of the run a refused command found in run_dir, from its checkpoint."""
    try:
        restore_hydra_files(run_dir, load(run_dir).hydra_files)
    except (RunFolderError, FileNotFoundError):
        log.warning(f"the config files in {run_dir / '.hydra'} could not be put back from its checkpoint")
