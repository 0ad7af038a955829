"""The evaluation suite's command line, for runs that are already trained.

    python -m vae_lab.evaluate RUN_DIR [RUN_DIR ...]    # a run or a whole sweep folder

adds the metrics to each finished run's summary.json and redraws its figures; nothing else is
rewritten. The suite itself: vae_lab/evaluation/suite.py; every metric: vae_lab/evaluation/metrics.py,
latent_holes.py, sample_quality.py and exact_likelihood.py.
"""

import argparse
import logging
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vae_lab.config import CONF_DIR
from vae_lab.errors import ConfigError, RunFolderError, VaeLabError
from vae_lab.evaluation.suite import evaluate_model
from vae_lab.figures.run_figures import draw_run_figures
from vae_lab.files import write_json
from vae_lab.legacy_configs import upgrade_legacy_loss
from vae_lab.runs import load_run
from vae_lab.training.run_folder import SUMMARY_FILE, find_runs

log = logging.getLogger("vae_lab.evaluate")
DEFAULT_SETTINGS = CONF_DIR / "evaluation" / "default.yaml"


def evaluation_settings(run_config, overrides: list[str] = ()) -> OmegaConf:
    """Give back a run's evaluation settings, with today's defaults (conf/evaluation/default.yaml)
    for keys the run's vae_lab did not have yet, and `overrides` ("mi_images=null") last."""
    try:
        given = OmegaConf.from_dotlist(list(overrides))
    except Exception as error:  # omegaconf's grammar errors
        raise ConfigError(f"--set {' '.join(overrides)}: {error}") from None
    settings = OmegaConf.merge(OmegaConf.load(DEFAULT_SETTINGS), run_config.get("evaluation", {}))
    unknown = sorted(set(given) - set(settings))
    if unknown:
        raise ConfigError(
            f"--set {', '.join(unknown)}: not an evaluation key; the keys are {', '.join(settings)}"
        )
    return OmegaConf.merge(settings, given)


def evaluate_folder(
    run_dir: Path,
    data_root: str | None = None,
    device: str = "cpu",
    overrides: list[str] = (),
    reuse: list[str] = (),
) -> dict:
    """Add the metrics to one finished run's summary.json and redraw its figures (unless it was trained
    with trainer.figures=false); give back the summary."""
    run = load_run(run_dir, device=device)
    if run.summary.get("status") != "completed":
        raise RunFolderError(
            f"{run_dir} has status {run.summary.get('status')!r}: only completed runs are evaluated."
        )
    data_cfg = run.config.data.copy()
    if data_root:
        data_cfg.root = data_root
    data = instantiate(data_cfg).to(torch.device(device))
    loss_cfg = upgrade_legacy_loss(OmegaConf.to_container(run.config.loss))
    likelihood = instantiate(loss_cfg).likelihood  # the pixel likelihood the run was trained with
    evaluation = evaluate_model(
        run.model,
        data,
        evaluation_settings(run.config, overrides),
        run.config.seed,
        data_cfg.root,
        test_parts=run.summary.get("test"),
        likelihood=likelihood,
        known={name: (run.summary.get("metrics") or {}).get(name) for name in reuse},
    )
    figures = []
    if run.config.trainer.get("figures", True):  # a run trained with trainer.figures=false gets none
        figures = draw_run_figures(run.model, data, run_dir, run.config.seed, evaluation)
    summary = dict(run.summary)
    summary["metrics"] = evaluation.metrics
    summary["figures"] = list(dict.fromkeys([*summary.get("figures", []), *figures]))
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vae-lab-evaluate", description="Add vae_lab's metrics to finished runs."
    )
    parser.add_argument("folders", nargs="+", type=Path, help="run or sweep folders (searched recursively)")
    parser.add_argument("--data-root", help="where the runs' data set lies, when not where they were trained")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an evaluation setting for this evaluation (repeatable), e.g. --set mi_images=null",
    )
    parser.add_argument(
        "--reuse",
        action="append",
        default=[],
        choices=["iwae"],
        help="keep this section of the run's earlier metrics instead of computing it again (the IWAE "
        "bound is the costliest; the same model and settings give the same numbers)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs = [run for folder in args.folders if folder.is_dir() for run in find_runs([folder])]
    if not runs:
        print(
            f"vae-lab-evaluate: no runs under {', '.join(map(str, args.folders))}: a run folder holds "
            ".hydra/config.yaml, as `python -m vae_lab.train` writes under outputs/.",
            file=sys.stderr,
        )
        return 2
    failures = 0
    for number, run_dir in enumerate(runs, 1):
        print(f"[{number}/{len(runs)}] evaluating {run_dir}", flush=True)
        try:
            summary = evaluate_folder(run_dir, args.data_root, args.device, args.set, args.reuse)
        except VaeLabError as error:
            print(f"vae-lab-evaluate: skipped {run_dir}: {error}", file=sys.stderr)
            failures += 1
            continue
        print(f"{run_dir}: evaluated in {summary['metrics']['evaluation_s']:.0f} s")
    return 1 if failures == len(runs) else 0


if __name__ == "__main__":
    sys.exit(main())
