"""One run over several processes with torch.distributed (docs/scaling.md).

torchrun, or SLURM through Hydra's submitit launcher, starts N processes. Each holds the whole model on
its own device (cuda:LOCAL_RANK, or the CPU), draws the same shuffled order of the training images
(the run's seed) and trains on its share of every global batch of `trainer.batch_size` images: rows
rank, rank + N, rank + 2N, ... of it, the way torch's DistributedSampler deals a permutation out.
DistributedDataParallel averages the gradients, so each step is the one-process step on the same
global batch. Process 0 alone writes the run folder, checkpoints, figures, trackers and summary, and
evaluates the trained model once.

What stays equal to one process: the batches, the reparameterisation noise (each process draws it for
the whole global batch from the same generator and keeps its rows), dynamic binarisation (the same),
and BatchNorm's statistics when `trainer.sync_batchnorm` is on (the default). What does not: dropout's
masks, which each process draws for its own rows, as in any data-parallel training.
"""

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from vae_lab.errors import ConfigError

log = logging.getLogger("vae_lab")


@dataclass(frozen=True)
class Ranks:
    """This process's place in its run: rank of world_size processes, local_rank on its machine."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Process 0: the one that writes the run's files."""
        return self.rank == 0

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """Give back this process's rows of a global batch: rank, rank + N, rank + 2N, ..."""
        return rows[self.rank :: self.world_size] if self.is_distributed else rows

    def shard_size(self, rows: int) -> int:
        return len(range(self.rank, rows, self.world_size))

    def any(self, *flags: bool, device: torch.device) -> list[bool]:
        """Give back, for each flag, whether it is set in any process (one all-reduce; no-op alone)."""
        if not self.is_distributed:
            return list(flags)
        values = torch.tensor([float(flag) for flag in flags], device=device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return [bool(value) for value in values.tolist()]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Give back values summed over the processes (the same tensor, alone)."""
        if self.is_distributed:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def wait_for_all(self) -> None:
        if self.is_distributed:
            dist.barrier()


ONE_PROCESS = Ranks()


def ranks_from_environment() -> Ranks:
    """The Ranks that torchrun (or TorchDistributedEnvironment.export) set in the environment."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ONE_PROCESS
    return Ranks(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=world_size,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world_size)),
    )


def in_submitit_job_of_several_tasks() -> bool:
    """True in a task of a submitit job (SLURM or local) that runs more than one task."""
    if os.environ.get("SUBMITIT_EXECUTOR") not in ("slurm", "local"):
        return False
    from submitit import JobEnvironment

    return JobEnvironment().num_tasks > 1


def join_run() -> Ranks:
    """Give back this process's Ranks, with the process group started where the run has several
    processes: torchrun's (its environment), or a submitit job's tasks (submitit's helper sets the
    rendezvous variables from SLURM's, on one node or several)."""
    if dist.is_available() and dist.is_initialized():
        return ranks_from_environment()
    if in_submitit_job_of_several_tasks() and "WORLD_SIZE" not in os.environ:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    ranks = ranks_from_environment()
    if ranks.is_distributed:
        start_process_group(ranks)
    return ranks


def start_process_group(ranks: Ranks) -> None:
    """gloo for CPU tensors, NCCL for CUDA ones (where torch sees a GPU); each process on its own GPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(ranks.local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))


def wait_for_the_others_to_finish(ranks: Ranks, timeout: timedelta = timedelta(hours=12)) -> None:
    """Every process of a finished run meets here before the process group ends: gloo aborts a process
    that tears its connections down while another still holds them (process 0 evaluates after training).
    On gloo the wait lasts up to `timeout`, which covers any evaluation; NCCL's lasts the group's 30 min."""
    if not ranks.is_distributed:
        return
    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=timeout, wait_all_ranks=True)
    else:
        dist.barrier()


def end_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def share_run_dir(ranks: Ranks, run_dir: Optional[str]) -> str:
    """Give back process 0's run folder in every process (Hydra resolves ${now:...} in each one)."""
    shared = [run_dir]
    dist.broadcast_object_list(shared, src=0, device=torch.device("cpu"))
    return shared[0]


def process_group_started() -> bool:
    return dist.is_available() and dist.is_initialized()


def refuse_sweep_under_torchrun(overrides: list[str]) -> None:
    """A sweep's jobs each need their own processes: torchrun starts one run."""
    if any(arg in ("-m", "--multirun") for arg in overrides):
        raise SystemExit(
            "error: torchrun starts the processes of one run, not a sweep (-m): run torchrun once per run, "
            "or sweep over runs of several processes each with hydra/launcher=slurm_ddp (docs/scaling.md)."
        )


def follower_overrides(run_dir: str) -> list[str]:
    """Hydra overrides for processes 1..N-1: process 0's run folder, and no .hydra/ files of their own
    (process 0's record the command as it was typed)."""
    quoted = run_dir.replace("\\", "\\\\").replace("'", "\\'")
    return [f"hydra.run.dir='{quoted}'", "hydra.output_subdir=null"]


def quiet_follower_logging() -> None:
    """Processes 1..N-1 leave the run's log file and messages to process 0, which says each of them
    once (a traceback of their own still reaches their console, and torchrun names the process)."""
    root = logging.getLogger()
    for handler in [handler for handler in root.handlers if isinstance(handler, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()
    logging.getLogger("vae_lab").setLevel(logging.CRITICAL)


def lost_process_reason(error: BaseException) -> str:
    """Give back the first sentence of a collective's error: "[pair.cc:545] Read error ...: Connection
    reset by peer" without its advice to read the other process's log."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return first.split(". This is typically")[0]


def is_lost_process_error(error: BaseException) -> bool:
    """True for what a collective raises when another process of the run is gone."""
    lost = ("connection closed by peer", "connection reset by peer", "broken pipe", "gloo", "nccl")
    distributed_error = getattr(dist, "DistError", ())
    return isinstance(error, distributed_error) or (
        isinstance(error, RuntimeError) and any(word in str(error).lower() for word in lost)
    )


def check_data_parallel_run(ranks: Ranks, batch_size: int, device_name: str, device: torch.device) -> None:
    """Refuse, in one line and before anything is built, a run that cannot be split over the processes."""
    if not ranks.is_distributed:
        return
    if batch_size % ranks.world_size:
        raise ConfigError(
            f"trainer.batch_size={batch_size} cannot be split evenly over {ranks.world_size} processes: "
            f"give a multiple of {ranks.world_size} (trainer.batch_size is the global batch)."
        )
    if device_name.startswith("cuda:"):
        raise ConfigError(
            f"device={device_name} in a run of {ranks.world_size} processes: each process takes its own "
            "GPU (cuda:LOCAL_RANK). Use device=auto or device=cuda."
        )
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and ranks.local_world_size > gpus:
        raise ConfigError(
            f"{ranks.local_world_size} processes on this machine, and torch sees {gpus} GPU(s): each process "
            f"needs its own. Start at most {gpus} (torchrun --nproc_per_node={gpus}), or train on the CPU "
            "with device=cpu."
        )


def check_last_batch(ranks: Ranks, batch_size: int, train_images: int) -> None:
    """Refuse a last batch with fewer images than processes (one of them would have none)."""
    last = train_images % batch_size
    if ranks.is_distributed and 0 < last < ranks.world_size:
        raise ConfigError(
            f"the last batch of the {train_images} training images holds {last} images, fewer than the "
            f"{ranks.world_size} processes: choose trainer.batch_size or data.limit so that it holds at "
            f"least {ranks.world_size}."
        )


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """Give back model wrapped in DistributedDataParallel (its gradients averaged at each backward)."""
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def synchronise_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Give back model whose BatchNorm layers normalise by the statistics of the whole global batch:
    torch's SyncBatchNorm on GPUs, SyncBatchNorm2dCPU (the same sums, through gloo) on the CPU. The
    layers keep their parameters and buffers, so the state-dict keys stay those of the plain model."""
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(model, name, SyncBatchNorm2dCPU.adopt(child))
        else:
            synchronise_batchnorm(child, device)
    return model


class SumOverProcesses(torch.autograd.Function):
    """x summed over the processes, with its gradient: each input's gradient is the summed gradient
    of the output (every process's loss depends on every process's sums)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class SyncBatchNorm2dCPU(nn.BatchNorm2d):
    """BatchNorm2d over the whole global batch in training, for CPU processes (torch's SyncBatchNorm
    runs on GPUs only): the channel sums and squared deviations are all-reduced, with their gradients.
    In eval mode, and in one process, it is BatchNorm2d."""

    @classmethod
    def adopt(cls, norm: nn.BatchNorm2d) -> "SyncBatchNorm2dCPU":
        synced = cls(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
        synced.weight, synced.bias = norm.weight, norm.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(synced, name, getattr(norm, name))
        return synced.train(norm.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        channels = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
        totals = SumOverProcesses.apply(torch.cat([x.sum(channels), count]))
        n = totals[-1]
        mean = totals[:-1] / n
        centred = x - mean.view(1, -1, 1, 1)
        var = SumOverProcesses.apply(centred.pow(2).sum(channels)) / n  # biased, as BatchNorm's
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.track_running_stats:
            self.update_running_stats(mean.detach(), var.detach(), n.item())
        return out

    @torch.no_grad()
    def update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        self.num_batches_tracked += 1
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * n / max(n - 1, 1)
        self.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
