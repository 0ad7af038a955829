"""What the bench measures, in the process that measures it: one variant of vae_lab's training path (or
the plain loop) built and stepped a few steps at a time on its parent's word (`python -m vae_lab.bench`
forks one such process per variant from a fork server that has imported this module); the FLOPs of a
step, the machine's matmul peak, a fresh process's first step and torch.profiler's table of the default
path."""

import os
import resource
import sys
import time
from multiprocessing.connection import Connection

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

from vae_lab.config import CONF_DIR, register_schemas
from vae_lab.data import ImageData, shuffled_batches
from vae_lab.devices import resolve_device
from vae_lab.training.build import build, instantiate_node
from vae_lab.training.loop import TrainStep


def compose_config(overrides: list[str]):
    register_schemas()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=article_vae", *overrides])


class LabTrainer:
    """vae_lab's own training path (build, device-resident data, TrainStep) run a few steps at a time."""

    def __init__(self, overrides: list[str], data: ImageData, batch_size: int, device: torch.device):
        cfg = compose_config([*overrides, f"trainer.batch_size={batch_size}"])
        self.step = TrainStep.sped_up(*build(cfg.model, cfg.loss, cfg.optimizer, device), cfg.speed)
        self.data, self.batch_size = data, batch_size
        self.generator = torch.Generator().manual_seed(0)
        self.batches = iter(())

    def steps(self, count: int) -> int:
        self.step.train()
        images = 0
        for _ in range(count):
            indices = next(self.batches, None)
            if indices is None:
                self.batches = shuffled_batches(
                    len(self.data.train_images),
                    self.batch_size,
                    self.generator,
                    self.data.train_images.device,
                )
                indices = next(self.batches)
            self.step(self.data.train_batch(indices))
            images += len(indices)
        return images


def timed_steps(trainer, count: int, device: torch.device) -> tuple[int, float]:
    """Take `count` training steps of a trainer (LabTrainer or the plain loop's); give back the images
    they took and their seconds, the GPU's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    images = trainer.steps(count)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images, time.perf_counter() - start


def serve_variant(spec: dict, connection: Connection, output_path: str) -> None:
    """The worker: build one variant, then answer the parent's `steps N` and `memory` requests over
    `connection`. What it prints goes to the file at `output_path`, whose last line the parent passes on
    if the worker stops; a variant that cannot be built stops with its reason as that line."""
    with open(output_path, "a") as output:  # the parent's terminal and its table stay the bench's own
        os.dup2(output.fileno(), sys.stdout.fileno())
        os.dup2(output.fileno(), sys.stderr.fileno())
    device = resolve_device(spec["device"])
    try:
        if spec["overrides"] is None:
            # imported here: its torchvision import (as the classic examples have it) costs seconds
            from vae_lab.speed import plain_vae

            trainer = plain_vae.PlainTrainer(spec["data_root"], spec["batch_size"], str(device))
        else:
            data = instantiate(compose_config([f"data.root={spec['data_root']}"]).data).to(device)
            trainer = LabTrainer(spec["overrides"], data, spec["batch_size"], device)
    except Exception as error:  # e.g. no MNIST under data_root: one line for the parent to pass on
        sys.exit(f"{type(error).__name__}: {' '.join(str(error).split())}")
    connection.send({"ready": True})
    while True:
        try:
            command, _, argument = connection.recv().partition(" ")
        except EOFError:  # the parent closed its end: the bench is over
            return
        if command == "steps":
            images, seconds = timed_steps(trainer, int(argument), device)
            connection.send({"images": images, "seconds": seconds})
        elif command == "memory":
            connection.send({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def flops_per_image(plain, batch_size: int, device: torch.device) -> float:
    """Count the FLOPs of one training step (forward and backward) of the article's VAE, per image."""
    model = plain.PlainVAE().to(device)
    x = torch.rand(batch_size, 1, 28, 28, device=device)
    with FlopCounterMode(display=False) as counter:
        logits, mu, log_var = model(x)
        plain.loss_function(logits, x, mu, log_var).backward()
    return counter.get_total_flops() / batch_size


def matmul_peak_gflops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """Give back the best fp32 matmul speed of this machine, in GFLOP/s."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def startup_probe(data_root: str, device: str) -> None:
    """What a training run does before its first step: compose, build, load the data, step once."""
    cfg = compose_config([f"data.root={data_root}", f"device={device}"])
    device = resolve_device(cfg.device)
    step = TrainStep.sped_up(*build(cfg.model, cfg.loss, cfg.optimizer, device), cfg.speed)
    data = instantiate(cfg.data).to(device)
    indices = next(
        shuffled_batches(len(data.train_images), cfg.trainer.batch_size, torch.Generator(), device)
    )
    step(data.train_batch(indices))
    print("first step done", flush=True)


def profile_default_path(data_root: str, device: str, steps: int, batch_size: int, rows: int = 25) -> str:
    """Give back torch.profiler's table of `steps` training steps of vae_lab's default path (after
    5 to warm up), its operators by self time, headed by the step's time with and without the profiler.

    Input shapes are not recorded. The profiler's own records make the process page-fault fresh memory
    in at every step (on a 2-core machine: about 7,700 faults a step without shapes, 15,000 with them,
    none unprofiled), which lands on the operators that write big outputs; with shapes, one profile
    there read a ReLU gradient at 12.5 ms a call that takes 0.3 to 1.1 ms unprofiled. The header gives the
    step's time both ways, so how far the profile strays is on show.
    """
    from torch.profiler import ProfilerActivity, profile

    torch_device = resolve_device(device)
    data = instantiate_node(compose_config([f"data.root={data_root}"]).data, "data").to(torch_device)
    trainer = LabTrainer([], data, batch_size, torch_device)
    trainer.steps(5)
    _, unprofiled = timed_steps(trainer, steps, torch_device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch_device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        _, profiled = timed_steps(trainer, steps, torch_device)
    table = profiler.key_averages().table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40
    )
    return (
        f"{steps} training steps of vae_lab's default path, batch {batch_size}, {torch_device}: "
        f"{unprofiled / steps * 1000:.1f} ms a step unprofiled, "
        f"{profiled / steps * 1000:.1f} ms profiled\n{table}"
    )
