"""Training speed of vae_lab against a plain PyTorch loop, measured side by side.

    python -m vae_lab.bench [--data-root data] [--rounds 5] [--window-steps 15] [--json PATH]
    python -m vae_lab.bench --profile 20    # where vae_lab's default step spends its time

The plain loop (vae_lab/speed/plain_vae.py) and vae_lab's training path with its defaults, and with
each speed option (conf/speed) on its own, take turns in short timed windows after a warm-up, so that
drift on a shared machine hits every variant alike; each variant's speed is the median of its windows.
Each variant trains in a process of its own (vae_lab/speed/measure.py), one at a time: process-wide
settings (the threads, the allocator's) stay that variant's, and each peak resident memory is that
variant's own. The variants' processes are forked from one fork server that has imported torch and
vae_lab, so each starts in a fraction of a second. It prints a line as each stage ends; the defaults
(5 rounds of 15-step windows) take a few minutes on a 2-core CPU.
"""

import argparse
import functools
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from vae_lab.devices import resolve_device
from vae_lab.errors import VaeLabError
from vae_lab.speed.cpu import cpu_features
from vae_lab.speed.measure import (
    compose_config,
    flops_per_image,
    matmul_peak_gflops,
    profile_default_path,
    serve_variant,
    startup_probe,
)
from vae_lab.training.build import instantiate_node

# every speed option off (conf/speed/off.yaml, and Adam's own fused kernel): vae_lab's data path alone;
# each option is then added on its own
OPTIONS_OFF = ["speed=off", "optimizer.fused=false"]
OPTIONS = {
    "channels_last": "speed.channels_last=true",
    "fast dropout": "speed.fast_dropout=true",
    "fast transpose": "speed.fast_transpose=true",
    "fused Adam": "optimizer.fused=true",
    "keep freed memory": "speed.keep_freed_memory=true",
    "compile": "speed.compile=true",
    "bf16 autocast": "speed.precision=bf16",
}
# options that work only together with others (the fused blocks run on channels_last batches and
# draw fast dropout's masks; the one-channel kernel runs on channels_last batches): measured as the
# default path against the default path without them
WITHOUT = {
    "fused blocks": "speed.fused_blocks=false",
    "one-channel kernel": "speed.one_channel_kernel=false",
}
ALL_OPTIONS = [*OPTIONS, *WITHOUT]
# an option within this fraction of the options-off speed is within the bench's noise: its windows
# drift by about this much on a shared machine
NOISE = 0.1


class BenchError(RuntimeError):
    """A variant's process could not build or train."""


@functools.cache
def variant_processes() -> multiprocessing.context.BaseContext:
    """multiprocessing's fork server, started once, with the variants' module (torch with it) imported:
    each variant's process is forked from it. Where there is none (Windows), each starts afresh."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["vae_lab.speed.measure"])
    return context


class Variant:
    """The parent's handle on one worker process."""

    def __init__(self, name: str, spec: dict):
        self.name = name
        # a file, so a chatty worker never blocks; its last line says why a worker stopped
        self.output = tempfile.NamedTemporaryFile(mode="w+", prefix="vae_lab-bench-", suffix=".log")
        self.connection, worker_end = multiprocessing.Pipe()
        self.process = variant_processes().Process(
            target=serve_variant, args=(spec, worker_end, self.output.name), name=f"bench: {name}"
        )
        self.process.start()
        worker_end.close()  # the worker holds its own: a worker that stops ends the parent's reads

    def answer(self) -> dict:
        try:
            return self.connection.recv()
        except EOFError:
            self.process.join(timeout=60)
            self.output.seek(0)
            lines = self.output.read().strip().splitlines() or ["(nothing)"]
            said = f"the {self.name!r} variant's process stopped; its last words: {lines[-1]}"
            raise BenchError(said) from None

    def ask(self, command: str) -> dict:
        self.connection.send(command)
        return self.answer()

    def close(self) -> None:
        self.connection.close()  # the worker's next read ends it
        self.process.join(timeout=60)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.output.close()


def startup_seconds(data_root: str, device: str) -> float:
    """Give back the seconds from starting a fresh process to the end of its first vae_lab training step."""
    start = time.perf_counter()
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "vae_lab.bench",
            "--startup-probe",
            "--data-root",
            data_root,
            "--device",
            device,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if child.returncode != 0 or "first step done" not in child.stdout:
        said = child.stderr.strip().splitlines() or ["(nothing)"]
        raise BenchError(f"the startup probe (a fresh process's first training step) failed: {said[-1]}")
    return time.perf_counter() - start


def variant_specs(options: list[str]) -> dict[str, Optional[list[str]]]:
    """Give back each variant's config overrides (None: the plain loop): plain, vae_lab's defaults, every
    option off, every option in `options` of OPTIONS on its own, and the default path without each
    option in `options` of WITHOUT."""
    unknown = [name for name in options if name not in OPTIONS and name not in WITHOUT]
    if unknown:
        raise BenchError(
            f"--options {','.join(unknown)}: not a speed option; choose from {', '.join(ALL_OPTIONS)}"
        )
    specs: dict[str, Optional[list[str]]] = {
        "plain": None,
        "vae_lab": [],
        "vae_lab, options off": OPTIONS_OFF,
    }
    for name in options:
        if name in OPTIONS:
            specs[f"options off + {name}"] = [*OPTIONS_OFF, OPTIONS[name]]
        else:
            specs[f"vae_lab without {name}"] = [WITHOUT[name]]
    return specs


def say(line: str) -> None:
    """A progress line on stdout, at once (the whole bench takes minutes)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {line}", flush=True)


def run_benchmark(
    data_root: str,
    device: str = "cpu",
    batch_size: int = 128,
    warmup_steps: int = 5,
    window_steps: int = 15,
    rounds: int = 5,
    options: Optional[list[str]] = None,
) -> dict:
    """Measure every variant in interleaved windows; give back the numbers (see the module docstring)."""
    torch_device = resolve_device(device)
    specs = variant_specs(ALL_OPTIONS if options is None else options)
    # unpack MNIST here, once: the plain loop's torchvision would otherwise read a file that a variant
    # started beside it is still unpacking (a fresh clone's first bench)
    instantiate_node(compose_config([f"data.root={data_root}"]).data, "data")
    variants = {
        name: Variant(
            name,
            {"overrides": overrides, "data_root": data_root, "batch_size": batch_size, "device": device},
        )
        for name, overrides in specs.items()
    }
    warmup_s, speeds, peak_rss = measure_in_turns(variants, warmup_steps, window_steps, rounds)
    from vae_lab.speed import plain_vae

    flops = flops_per_image(plain_vae, batch_size, torch_device)
    peak = matmul_peak_gflops(torch_device)
    results = {}
    for name, samples in speeds.items():
        median = statistics.median(samples)
        results[name] = {
            "images_per_s": median,
            "windows_images_per_s": samples,
            "ratio_to_plain": median / statistics.median(speeds["plain"]),
            "gflops_per_s": median * flops / 1e9,
            "share_of_matmul_peak": median * flops / 1e9 / peak,
            "warmup_s": warmup_s[name],  # compile time included for the compiled variant
            "peak_rss_mib": peak_rss[name],
        }
    return {
        "device": str(torch_device),
        "cpu": cpu_features().describe(),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "window_steps": window_steps,
        "rounds": rounds,
        "flops_per_image": flops,
        "matmul_peak_gflops": peak,
        "peak_rss_mib": peak_rss["vae_lab"],  # the training process of vae_lab's default path
        "startup_to_first_step_s": startup_seconds(data_root, device),
        "variants": results,
        "ratio": results["vae_lab"]["ratio_to_plain"],
    }


def measure_in_turns(variants: dict, warmup_steps: int, window_steps: int, rounds: int):
    """Give back (each variant's warm-up seconds, its images/s in each window, its peak RSS in MiB): the
    variants warm up, then take turns, one window each per round, and are closed at the end."""
    try:
        for variant in variants.values():
            variant.answer()  # ready: built, data loaded
        say(f"{len(variants)} variants built, each in a process of its own; warming up")
        warmup_s = {name: v.ask(f"steps {warmup_steps}")["seconds"] for name, v in variants.items()}
        speeds: dict[str, list[float]] = {name: [] for name in variants}
        for round_number in range(1, rounds + 1):
            for name, variant in variants.items():  # one at a time: the others wait on their stdin
                window = variant.ask(f"steps {window_steps}")
                speeds[name].append(window["images"] / window["seconds"])
            say(
                f"round {round_number}/{rounds}: plain {speeds['plain'][-1]:.0f} img/s, "
                f"vae_lab {speeds['vae_lab'][-1]:.0f} img/s"
            )
        peak_rss = {name: v.ask("memory")["peak_rss_mib"] for name, v in variants.items()}
    finally:
        for variant in variants.values():
            variant.close()
    return warmup_s, speeds, peak_rss


def format_table(report: dict) -> str:
    lines = [
        f"device {report['device']}, {report['threads']} threads, batch {report['batch_size']}, "
        f"median of {report['rounds']} interleaved windows of {report['window_steps']} steps",
        f"CPU: {report['cpu']}",
        f"{report['flops_per_image'] / 1e6:.1f} MFLOP per training image; fp32 matmul peak "
        f"{report['matmul_peak_gflops']:.0f} GFLOP/s",
        "",
        "| variant | images/s | x plain | GFLOP/s | share of matmul peak | warm-up s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["variants"].items():
        lines.append(
            f"| {name} | {row['images_per_s']:.0f} | {row['ratio_to_plain']:.2f} | "
            f"{row['gflops_per_s']:.1f} | {row['share_of_matmul_peak']:.0%} | {row['warmup_s']:.1f} | "
            f"{row['peak_rss_mib']:.0f} |"
        )
    lines += ["", *option_verdicts(report["variants"])]
    lines += [
        "",
        f"peak resident memory of vae_lab's training process: {report['peak_rss_mib']:.0f} MiB",
        f"process start to first vae_lab training step: {report['startup_to_first_step_s']:.1f} s",
    ]
    return "\n".join(lines)


def option_verdicts(variants: dict) -> list[str]:
    """Give back one line per speed option: faster or slower on this machine than the options-off
    path (an option of OPTIONS) or than the default path without it (an option of WITHOUT).

    An option slower here is not one to turn on here, whatever it does on other CPUs (docs/speed.md).
    Within NOISE of 1 the bench cannot tell: its windows drift by about that much on a shared machine.
    """
    off = variants["vae_lab, options off"]["images_per_s"]
    lines = []
    for name, row in variants.items():
        if name.startswith("options off + "):
            option, ratio = name.removeprefix("options off + "), row["images_per_s"] / off
            against = "the options-off path"
        elif name.startswith("vae_lab without "):
            option = name.removeprefix("vae_lab without ")
            ratio = variants["vae_lab"]["images_per_s"] / row["images_per_s"]
            against = "the default path without it"
        else:
            continue
        if ratio >= 1 + NOISE:
            verdict = "faster here"
        elif ratio <= 1 - NOISE:
            verdict = "slower here: leave it off on this CPU"
        else:
            verdict = f"within the bench's noise (±{NOISE:.0%}) on its own"
        lines.append(f"{option}: {ratio:.2f}x {against}, {verdict}")
    return lines


def profile_command(args: argparse.Namespace) -> int:
    """`--profile STEPS`: print where the default path's step spends its time; give back the exit status."""
    if args.profile < 1:
        print(f"python -m vae_lab.bench: --profile {args.profile}: give 1 or more steps", file=sys.stderr)
        return 1
    try:
        print(profile_default_path(args.data_root, args.device, args.profile, args.batch_size))
    except VaeLabError as error:
        print(f"python -m vae_lab.bench: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # e.g. no MNIST under --data-root: one line, as a variant's worker says it
        print(
            f"python -m vae_lab.bench: {type(error).__name__}: {' '.join(str(error).split())}",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vae_lab.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--window-steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variant")
    parser.add_argument(
        "--options",
        help=f"measure only these options, comma-separated ({', '.join(ALL_OPTIONS)}); '' for none",
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument(
        "--profile", type=int, metavar="STEPS", help="instead: profile STEPS steps of the default path"
    )
    parser.add_argument("--startup-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.startup_probe:
        startup_probe(args.data_root, args.device)
        return 0
    if args.profile is not None:
        return profile_command(args)
    try:
        report = run_benchmark(
            args.data_root,
            args.device,
            args.batch_size,
            args.warmup_steps,
            args.window_steps,
            args.rounds,
            options=[
                name
                for name in (ALL_OPTIONS if args.options is None else filter(None, args.options.split(",")))
                if not (args.no_compile and name == "compile")
            ],
        )
    except (BenchError, VaeLabError) as error:
        print(f"python -m vae_lab.bench: {error}", file=sys.stderr)
        return 1
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
