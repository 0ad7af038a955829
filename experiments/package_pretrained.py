"""Pack finished runs into vae_lab/pretrained/<name>/: float16 weights, config, summary, metrics, record.

python experiments/package_pretrained.py NAME=RUN_DIR [NAME=RUN_DIR ...] --trained "COMMAND" \
    --commit SHA --machine "WHERE IT RAN" [--data-root data]

The shipped weights are the run's state dict in float16 (each file under 1 MB); their test loss on the
MNIST test split, computed on the CPU with the run's seed after loading them back as float32, is
recorded in summary.json under `shipped`, and tests/test_pretrained.py checks every shipped model
against it.
"""

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vae_lab.errors import VaeLabError
from vae_lab.evaluation.inference import evaluate_loss
from vae_lab.legacy_configs import upgrade_legacy_model
from vae_lab.pretrained import CONFIG, FOLDER, RECORD, SUMMARY, WEIGHTS
from vae_lab.runs import load_run


def pack(name: str, run_dir: Path, trained: dict, data_root: str) -> dict:
    """Write vae_lab/pretrained/<name>/ from a finished run; give back the shipped test loss."""
    run = load_run(run_dir)
    folder = FOLDER / name
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        key: value.half() if value.is_floating_point() else value
        for key, value in run.model.state_dict().items()
    }
    torch.save(state, folder / WEIGHTS)
    config = OmegaConf.to_container(run.config, resolve=True)
    config["model"] = upgrade_legacy_model(config["model"])
    config["data"]["root"] = "data"
    OmegaConf.save(OmegaConf.create(config), folder / CONFIG)
    shutil.copy(run_dir / "metrics.jsonl", folder / "metrics.jsonl")
    (folder / SUMMARY).write_text(json.dumps(run.summary, indent=2) + "\n")  # read back by load_pretrained
    shipped = shipped_test_loss(name, config, data_root)
    summary = dict(run.summary) | {"shipped": {"weights": "float16", "device": "cpu", "test": shipped}}
    (folder / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    packed = {
        "command": "python experiments/package_pretrained.py " + " ".join(map(shlex.quote, sys.argv[1:])),
        "commit": current_commit(),
        "date": str(date.today()),
    }
    (folder / RECORD).write_text(json.dumps({"trained": trained, "packed": packed}, indent=2) + "\n")
    return shipped


def shipped_test_loss(name: str, config: dict, data_root: str) -> dict:
    """The test loss of the shipped (float16) weights, loaded as vae_lab.load_pretrained loads them."""
    from vae_lab.pretrained import load_pretrained

    run = load_pretrained(name)
    data = instantiate(OmegaConf.create(config["data"] | {"root": data_root}))
    loss = instantiate(OmegaConf.create(config["loss"]))
    return evaluate_loss(
        run.model, loss, data.test_images, config["trainer"]["eval_batch_size"], config["seed"]
    )


def current_commit() -> str:
    here = Path(__file__).resolve().parent  # the checkout this script is in, wherever it runs from
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here)
    return result.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    parser.add_argument("--trained", required=True, help="the command that trained the runs")
    parser.add_argument("--commit", required=True, help="the commit they were trained at")
    parser.add_argument("--machine", required=True, help="the machine they were trained on")
    parser.add_argument("--data-root", default="data")
    args = parser.parse_args()
    trained = {"command": args.trained, "commit": args.commit, "machine": args.machine}
    for entry in args.runs:
        name, _, run_dir = entry.partition("=")
        try:
            shipped = pack(name, Path(run_dir), trained, args.data_root)
        except VaeLabError as error:
            print(f"package_pretrained: {name}: {error}", file=sys.stderr)
            return 1
        size = (FOLDER / name / WEIGHTS).stat().st_size
        print(f"{name}: {size / 1e6:.2f} MB, shipped test total {shipped['total']:.4f} nats per image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
