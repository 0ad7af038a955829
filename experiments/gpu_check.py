"""The GPU check: on a machine with CUDA, the test suite (tests/test_on_device.py on the GPU, the rest
as in CI), the speed bench with --device cuda, a 2-epoch ablation and one run over every visible GPU
with torchrun (one process where there is one GPU; docs/scaling.md), then a short report.

    make gpu-check                                   # = python experiments/gpu_check.py
    python experiments/gpu_check.py --steps bench    # some of the steps: tests, bench, ablation
    python experiments/gpu_check.py --device cpu --quick   # the same steps, tiny, on a CPU (a dry run)

Writes <out>/report.md (and each step's full output beside it, <step>.log); prints the report.
"""

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STEPS = ("tests", "bench", "ablation", "data_parallel")
LIGHT_EVALUATION = ["evaluation.iwae_images=200", "evaluation.prior_samples=2000"]


@dataclass
class StepResult:
    name: str
    command: list[str]
    exit_code: int
    seconds: float
    tail: str  # the last lines of its output


def step_commands(device: str, quick: bool, out: Path) -> dict[str, tuple[list[str], dict]]:
    """Give back {step: (command, extra environment)}: what each step of the check runs."""
    python = sys.executable
    tests = [python, "-m", "pytest", "-p", "no:cacheprovider"]  # -q is in addopts: a second hides the summary
    tests += ["tests/test_on_device.py"] if quick else []
    bench = [python, "-m", "vae_lab.bench", "--device", device, "--json", str(out / "bench.json")]
    bench += ["--rounds", "1", "--window-steps", "3", "--warmup-steps", "1", "--no-compile"] if quick else []
    ablation = [python, "experiments/ablation.py", f"device={device}", f"hydra.sweep.dir={out / 'ablation'}"]
    ablation += (
        ["trainer.epochs=1", "data.limit=1000", "evaluation.iwae_k=10"] if quick else ["trainer.epochs=2"]
    )
    ablation += ["trainer.progress=false", *LIGHT_EVALUATION]
    return {
        "tests": (tests, {"VAE_LAB_TEST_DEVICE": device}),
        "bench": (bench, {}),
        "ablation": (ablation, {}),
        "data_parallel": (data_parallel_command(device, quick, out), {}),
    }


def data_parallel_command(device: str, quick: bool, out: Path) -> list[str]:
    """torchrun over every visible GPU (one process with one GPU; two gloo processes on a CPU dry run):
    the article's VAE for one epoch, its summary.json naming the world size."""
    processes = max(1, torch.cuda.device_count()) if device.startswith("cuda") else 2
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    run += ["-m", "vae_lab.train", "model=vae", "trainer.epochs=1", "trainer.progress=false"]
    run += [
        "device=cuda" if device.startswith("cuda") else "device=cpu",
        f"hydra.run.dir={out / 'data_parallel'}",
    ]
    return run + (["data.limit=1024", "evaluation.enabled=false"] if quick else LIGHT_EVALUATION)


def run_step(name: str, command: list[str], environment: dict, out: Path) -> StepResult:
    """Run one step from the repository root, its output into <out>/<name>.log; give back its result."""
    print(f"[gpu-check] {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    log = out / f"{name}.log"
    with log.open("w") as file:
        process = subprocess.run(
            command, cwd=REPO, stdout=file, stderr=subprocess.STDOUT, env=os.environ | environment
        )
    seconds = time.perf_counter() - started
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    print(f"[gpu-check] {name}: exit {process.returncode} after {seconds:.0f} s", flush=True)
    return StepResult(name, command, process.returncode, seconds, tail)


def machine_lines(device: str) -> list[str]:
    lines = [f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}"]
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        lines.append(
            f"- {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
            f"{props.major}.{props.minor}, CUDA {torch.version.cuda}"
        )
    lines.append(f"- {os.cpu_count()} CPU cores")
    return lines


def format_report(device: str, results: list[StepResult], out: Path) -> str:
    """Give back the report: the machine, a table of the steps, the bench's and the ablation's tables."""
    lines = [f"# GPU check on {device}", "", *machine_lines(device), ""]
    lines += ["| step | exit | wall time | command |", "|---|---|---|---|"]
    for result in results:
        state = "ok" if result.exit_code == 0 else f"**failed ({result.exit_code})**"
        lines.append(
            f"| {result.name} | {state} | {result.seconds:.0f} s | `{' '.join(result.command[1:])}` |"
        )
    for result in results:
        lines += ["", f"## {result.name}", ""]
        if result.name == "bench" and (out / "bench.json").is_file():
            import json

            from vae_lab.bench import format_table

            lines.append(format_table(json.loads((out / "bench.json").read_text())))
        elif result.name == "ablation" and (out / "ablation" / "comparison.md").is_file():
            lines.append((out / "ablation" / "comparison.md").read_text().strip())
        elif result.name == "data_parallel" and (out / "data_parallel" / "summary.json").is_file():
            lines.append(data_parallel_line(out / "data_parallel" / "summary.json"))
        else:
            lines += ["```", result.tail, "```"]
        lines += ["", f"(full output: {result.name}.log)"]
    return "\n".join(lines) + "\n"


def data_parallel_line(summary_file: Path) -> str:
    import json

    summary = json.loads(summary_file.read_text())
    if summary.get("status") != "completed":
        return f"status {summary.get('status')}: {summary.get('error')}"
    return (
        f"{summary['world_size']} process(es), {summary['batch_per_process']} images per process and step, "
        f"test loss {summary['test']['total']:.2f} nats per image, {summary['wall_time_s']:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a dry run")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings: a minute or two, not a measurement"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_check"))
    args = parser.parse_args(argv)
    steps = [step for step in args.steps.split(",") if step]
    unknown = [step for step in steps if step not in STEPS]
    if unknown:
        print(f"gpu_check: --steps {args.steps!r} names {', '.join(unknown)}; choose from {', '.join(STEPS)}")
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"gpu_check: --device {args.device}, but torch {torch.__version__} sees no CUDA device here "
            "(no GPU, or a CPU-only torch). Run it on a machine with one, or --device cpu --quick for a "
            "dry run of the same steps."
        )
        return 1
    out = args.out if args.out.is_absolute() else REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    commands = step_commands(args.device, args.quick, out)
    results = [run_step(step, *commands[step], out) for step in steps]
    report = format_report(args.device, results, out)
    (out / "report.md").write_text(report)
    print(report)
    print(f"[gpu-check] report: {out / 'report.md'}")
    return 0 if all(result.exit_code == 0 for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
