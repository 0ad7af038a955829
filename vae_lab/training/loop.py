"""The training loop, with no Hydra in it: one step, one epoch, and `fit`, read top to bottom.

Training, the bench and the tests all step through `TrainStep`, so the three cannot drift apart.
"""

import inspect
import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

from vae_lab.data import ImageData, shuffled_batches
from vae_lab.errors import VaeLabError
from vae_lab.evaluation.inference import evaluate_loss
from vae_lab.losses import LossParts, loss_parts
from vae_lab.speed import SpeedOptions, speed_up
from vae_lab.speed.cpu import cpu_features
from vae_lab.training import checkpoint as checkpoints
from vae_lab.training.checkpoint import Checkpoint, EpochPosition
from vae_lab.training.distributed import ONE_PROCESS, Ranks, data_parallel
from vae_lab.training.early_stopping import EarlyStopping
from vae_lab.training.run_folder import write_metrics
from vae_lab.training.schedule import EpochSchedule
from vae_lab.training.stopping import RunInterrupted, StopSignals

log = logging.getLogger("vae_lab")


class TrainingDiverged(VaeLabError):
    """The training loss became NaN or infinite."""


class TrainStep:
    """One optimisation step of model on loss, run as the speed options say (conf/speed/*.yaml): they
    change how, never what, it computes (docs/speed.md).

    speed.channels_last: NHWC batches (the transform puts the weights in NHWC). speed.compile:
    torch.compile the forward pass (it shares the model's parameters). speed.precision="bf16": the
    forward pass under bfloat16 autocast; the loss, the gradients and the optimiser stay in fp32.
    """

    def __init__(
        self, model, loss, optimizer, speed: Optional[SpeedOptions] = None, ranks: Ranks = ONE_PROCESS
    ):
        """ranks: this process's place in a run of several (vae_lab/training/distributed.py); the
        step then takes the global batch, trains on this process's rows and averages the gradients."""
        self.model, self.loss, self.optimizer, self.ranks = model, loss, optimizer, ranks
        speed = speed if speed is not None else SpeedOptions()  # every option off
        self.memory_format = torch.channels_last if speed.channels_last else torch.contiguous_format
        device = next(model.parameters()).device
        forward_model = data_parallel(model, device) if ranks.is_distributed else model
        self.forward_model = torch.compile(forward_model) if speed.compile else forward_model
        # the noise of the whole global batch, drawn alike in every process, as one process draws it
        self.shares_noise = ranks.is_distributed and "noise" in inspect.signature(model.forward).parameters
        self.bf16 = speed.precision == "bf16"
        if self.bf16:
            warn_if_bf16_is_slow_here(device)

    @classmethod
    def sped_up(cls, model, loss, optimizer, speed, ranks: Ranks = ONE_PROCESS) -> "TrainStep":
        """The step of `model` with the faster layers of `speed` (a conf/speed node or SpeedOptions)
        swapped in first (vae_lab/speed/transform.py)."""
        options = SpeedOptions.of(speed)
        return cls(speed_up(model, options), loss, optimizer, options, ranks)

    def train(self) -> None:
        self.forward_model.train()

    def __call__(self, batch: torch.Tensor) -> LossParts:
        """Take one optimisation step on a (global) batch of float images; give back the loss's parts
        on this process's rows of it."""
        rows = len(batch)
        noise = None
        if self.shares_noise:
            noise = self.ranks.shard(torch.randn(rows, self.model.latent_dim, device=batch.device))
        x = self.ranks.shard(batch).contiguous(memory_format=self.memory_format)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            output = self.forward_model(x) if noise is None else self.forward_model(x, noise=noise)
        parts = loss_parts(self.loss, output.float() if self.bf16 else output, x, self.decode)
        self.optimizer.zero_grad(set_to_none=True)
        if self.ranks.is_distributed and len(x) * self.ranks.world_size != rows:
            # an uneven last batch: weigh each process's mean by its rows, so that the averaged
            # gradient is the mean over the global batch
            (parts.total * (len(x) * self.ranks.world_size / rows)).backward()
        else:
            parts.total.backward()
        self.optimizer.step()
        return parts

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Pixel logits of codes from the model's decoder, at the step's precision, in fp32: the further
        draws of a loss that decodes its own (losses.loss_parts)."""
        with torch.autocast(codes.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model.decoder(codes).float()


def warn_if_bf16_is_slow_here(device: torch.device) -> None:
    """bf16 autocast on a CPU without native bf16 is slower than fp32: say so before training."""
    cpu = cpu_features()
    if device.type == "cpu" and cpu.native_bf16 is False:
        log.warning(
            f"speed.precision=bf16 on a CPU without AMX-BF16 or AVX512-BF16 ({cpu.name}): bf16 autocast is "
            "slower than fp32 on such CPUs (docs/speed.md); speed.precision=fp32 trains faster here"
        )


def train_epoch(
    step: TrainStep,
    data: ImageData,
    batch_size: int,
    generator: torch.Generator,
    position: Optional[EpochPosition] = None,
    stop: Optional[StopSignals] = None,
    progress: bool = False,
    desc: str = "",
) -> Optional[dict[str, Optional[float]]]:
    """Run one pass over the training images; give back mean total, recon, KL (and the loss's own
    terms) in nats per image.

    From `position` on, where given (it is updated step by step). Where `stop` is requested before
    the last batch, give back None: `position` then says where to go on.
    """
    step.train()
    images = data.train_images
    if position is None:
        position = EpochPosition(epoch=0, order_rng=generator.get_state())
    generator.set_state(position.order_rng)  # the same permutation when an epoch is taken up again
    batches = shuffled_batches(len(images), batch_size, generator, images.device)
    num_batches = -(-len(images) // batch_size)
    sums = PartSums(position, images.device, step.ranks)
    started = time.perf_counter()
    bar = progress_bar(
        itertools.islice(batches, position.step, None), num_batches, position.step, desc, progress
    )
    quarters = {num_batches * quarter // 4 for quarter in (1, 2, 3)} if bar.disable else set()
    for indices in bar:
        parts = step(data.train_batch(indices))
        # a sync per step, small beside the step itself; in a run of several processes, all of them
        # learn whether any diverged or was asked to stop, and stop at the same step
        diverged, stopping = step.ranks.any(
            not torch.isfinite(parts.total), stop is not None and stop.requested, device=images.device
        )
        if diverged:
            raise TrainingDiverged(
                f"the training loss became {parts.total.item()} at epoch {position.epoch}, step "
                f"{position.step + 1} of {num_batches}"
                + (" (in one of the processes)" if step.ranks.is_distributed else "")
                + ": training stopped. Try a smaller optimizer.lr."
            )
        sums.add(parts, step.ranks.shard_size(len(indices)))
        position.step += 1
        if position.step in quarters:
            seconds = position.train_s + time.perf_counter() - started
            log.info(f"{desc or 'epoch'}: step {position.step}/{num_batches}, {seconds:.0f} s")
        if stopping and position.step < num_batches:
            stop.note_stop_elsewhere()  # where the signal reached another process first
            break
    sums.keep_in(position)
    position.train_s += time.perf_counter() - started
    if position.step < num_batches:
        return None
    return sums.means(len(images), position.has_kl)


def progress_bar(batches, total: int, initial: int, desc: str, progress: bool) -> tqdm:
    """A bar on a terminal (disable=None: tqdm shows it only there); elsewhere (progress off, a log
    file, jobs that share one terminal) a disabled one: the epoch then logs a line at each quarter."""
    return tqdm(
        batches, total=total, initial=initial, desc=desc, leave=False, disable=None if progress else True
    )


PARTS = ("total", "recon", "kl")  # the order of EpochPosition.sums in a checkpoint


class PartSums:
    """The epoch's running sums of each part x images, kept on the device (no sync per step), from an
    EpochPosition's and back into it; in a run of several processes, summed over them there."""

    def __init__(self, position: EpochPosition, device: torch.device, ranks: Ranks = ONE_PROCESS):
        self.position, self.device, self.ranks = position, device, ranks
        saved = dict(zip(PARTS, position.sums, strict=True)) | position.term_sums
        if not ranks.is_main:  # the saved sums are the whole run's: counted once, in process 0
            saved = dict.fromkeys(saved, 0.0)
        self.sums = {name: torch.tensor(value, device=device) for name, value in saved.items()}

    def add(self, parts: LossParts, count: int) -> None:
        self.position.has_kl = parts.kl is not None
        for name, value in parts.named().items():
            value = value.detach() if value is not None else torch.zeros((), device=self.device)
            if name not in self.sums:  # a loss's own term, first seen
                self.sums[name] = torch.zeros((), device=self.device)
            self.sums[name] += value * count

    def keep_in(self, position: EpochPosition) -> None:
        """Sum over the processes (once, at the epoch's end or stop), then keep in `position`."""
        names = list(self.sums)
        totals = self.ranks.sum(torch.stack([self.sums[name] for name in names]))
        self.sums = dict(zip(names, totals, strict=True))
        position.sums = [self.sums[name].item() for name in PARTS]
        position.term_sums = {name: sum_.item() for name, sum_ in self.sums.items() if name not in PARTS}

    def means(self, images: int, has_kl: bool) -> dict[str, Optional[float]]:
        means = {name: (sum_ / images).item() for name, sum_ in self.sums.items()}
        return means | {"kl": means["kl"] if has_kl else None}


@dataclass
class FitSettings:
    """What `fit` reads of the config: the trainer's numbers and what a checkpoint records."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    seed: int  # orders the training images; fixes the test loss's noise
    progress: bool
    resume_config: dict[str, Any]  # checkpoint.resume_key of the run
    speed: dict[str, Any]  # the speed options it trains with, kept in each checkpoint
    hydra_files: dict[str, str]  # the run's .hydra/*.yaml, kept in each checkpoint
    early_stopping_patience: Optional[int] = None  # epochs; None: no early stopping (early_stopping.py)
    schedule: EpochSchedule = EpochSchedule()  # KL warm-up and learning-rate stages (schedule.py)


def _restore(
    step: TrainStep, checkpoint: Optional[Checkpoint], generator: torch.Generator, run_dir: Path
) -> tuple[list[dict[str, Any]], Optional[EpochPosition]]:
    """The history and the place within an epoch that `checkpoint` holds (none without one), its weights,
    optimizer state and image order restored."""
    if checkpoint is None:
        return [], None
    checkpoint.restore(step.model, step.optimizer, generator)
    history, position = checkpoint.history, checkpoint.position
    log.info(
        f"resuming after epoch {checkpoint.epoch}"
        + (f", step {position.step} of epoch {position.epoch}" if position else "")
    )
    if step.ranks.is_main:
        write_metrics(run_dir, history)  # drops a line written after the checkpoint, before a kill
    return history, position


def fit(
    step: TrainStep,
    data: ImageData,
    settings: FitSettings,
    run_dir: Path,
    checkpoint: Optional[Checkpoint] = None,
    stop: Optional[StopSignals] = None,
    logger=None,
) -> dict[str, Any]:
    """Train up to settings.epochs from `checkpoint` (or from scratch), checkpointing every epoch and
    when a stop signal arrives; give back the last epoch's record."""
    generator = torch.Generator().manual_seed(settings.seed)  # the order of the training images
    history, position = _restore(step, checkpoint, generator, run_dir)

    stopper = EarlyStopping.start(
        settings.early_stopping_patience, data, run_dir, history, step.model, step.ranks.is_main
    )
    # a resumed run that early stopping had ended trains no further epoch
    last_epoch = len(history) if stopper is not None and stopper.exhausted(history) else settings.epochs
    loss = step.loss  # the test and validation splits are measured with it; training may lower its KL

    def save(position: Optional[EpochPosition]) -> None:
        """Process 0 writes the checkpoint; every process waits for it where it is the last one."""
        if step.ranks.is_main:
            checkpoints.save(run_dir, checkpoints.checkpoint_of(step, history, generator, settings, position))

    for epoch in range(len(history) + 1, last_epoch + 1):
        if position is None:
            position = EpochPosition(epoch=epoch, order_rng=generator.get_state())
        desc = f"epoch {epoch}/{settings.epochs}"
        step.loss, noted = settings.schedule.begin(epoch, loss, step.optimizer)
        train = train_epoch(
            step, data, settings.batch_size, generator, position, stop, settings.progress, desc
        )
        step.loss = loss
        if train is None:  # a stop signal: keep the epoch's place
            save(position)
            step.ranks.wait_for_all()
            stop_now(stop, run_dir, f"epoch {epoch}, step {position.step}", step.ranks)
        evaluated = time.perf_counter()
        test = evaluate_loss(step.model, loss, data.test_images, settings.eval_batch_size, settings.seed)
        eval_s = time.perf_counter() - evaluated
        history.append(epoch_record(epoch, train, test, position, eval_s, len(data.train_images)) | noted)
        if stopper is not None:
            history[-1]["validation"] = stopper.validation_loss(
                step.model, loss, data, settings.eval_batch_size, settings.seed
            )
        position = None
        save(None)  # the checkpoint first: metrics.jsonl is rewritten from it on resume
        if step.ranks.is_main:
            write_metrics(run_dir, history)
        if logger is not None:
            logger.log_epoch(history[-1])
        log.info(
            f"epoch {epoch}/{settings.epochs}  train: {format_parts(train)}  |  test: {format_parts(test)}  "
            f"|  {history[-1]['train_s']:.1f} s, {history[-1]['train_images_per_s']:.0f} img/s"
        )
        if step.ranks.any(stop is not None and stop.requested, device=data.train_images.device)[0]:
            stop.note_stop_elsewhere()
            step.ranks.wait_for_all()
            stop_now(stop, run_dir, f"the end of epoch {epoch}", step.ranks)
        if stopper is not None and stopper.after_epoch(history, step.model, step.ranks.is_main):
            break
    return history[-1] if stopper is None else stopper.finish(history, step.model)  # the kept epoch's


def epoch_record(
    epoch: int, train: dict, test: dict, position: EpochPosition, eval_s: float, images: int
) -> dict:
    """Give back one line of metrics.jsonl: the epoch's losses and how long it took."""
    return {
        "epoch": epoch,
        "train": train,
        "test": test,
        "train_s": round(position.train_s, 3),
        "epoch_s": round(position.train_s + eval_s, 3),
        "train_images_per_s": round(images / position.train_s, 1),
    }


def format_parts(numbers: dict[str, Optional[float]]) -> str:
    """Give back 'total T  recon R  kl K' of a loss record (kl n/a for a deterministic model), then the
    loss's own terms."""
    shown = {name: "n/a" if value is None else f"{value:.2f}" for name, value in numbers.items()}
    return "  ".join(f"{name} {value}" for name, value in shown.items())


REQUEUE_WAIT_S = 60  # a task other than 0 of a submitit job, after a stop signal


def stop_now(stop: StopSignals, run_dir: Path, where: str, ranks: Ranks = ONE_PROCESS) -> None:
    """After the checkpoint is saved: hand the signal to submitit (it requeues the job), or stop the run."""
    log.warning(f"{stop.name} received: checkpoint saved at {where} in {run_dir}")
    hand_over = stop.hand_over()
    if hand_over is not None:
        hand_over()  # submitit requeues the job into the same folder and exits (in task 0)
        if not ranks.is_main:  # the other tasks of a job wait for that requeue, which ends them
            time.sleep(REQUEUE_WAIT_S)
    raise RunInterrupted(
        f"stopped by {stop.name} at {where}; the checkpoint is saved. Go on with the same command plus "
        f"`trainer.resume=true hydra.run.dir={run_dir}` (a sweep: the same command plus "
        "`hydra.sweep.dir=<its folder>`).",
        stop.signum,
    )
