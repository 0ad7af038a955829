"""The Hydra entry point: compose -> check -> build -> fit -> evaluate -> draw.

    python -m vae_lab.train model=ae loss=recon model.latent_dim=16 trainer.epochs=3 seed=1

Everything a run makes lands in its Hydra run folder (outputs/<date>/<time>/).
"""

import importlib.util
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from vae_lab import evaluate, plots
from vae_lab.config import check_config, register_schemas, resolve_device
from vae_lab.data import ImageData, shuffled_batches
from vae_lab.errors import ConfigError, VaeLabError
from vae_lab.runs import append_metrics, save_checkpoint, write_json

log = logging.getLogger("vae_lab")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # absolute: works from any module or folder
register_schemas()


def _instantiate(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """instantiate() whose failures name the config key instead of raising a traceback."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        message = str(error).splitlines()[0]
        raise ConfigError(f"{key} could not be built from its config: {message}") from error


def build(cfg: DictConfig, device: torch.device):
    """Give back (model, loss, optimizer) built from their configs, after checking they fit together."""
    model = _instantiate(cfg.model, "model").to(device)
    if cfg.trainer.channels_last:
        model.to(memory_format=torch.channels_last)  # conv weights in NHWC, like the batches
    loss = _instantiate(cfg.loss, "loss")
    if loss.requires_posterior and not model.is_variational:
        raise ConfigError(
            f"loss {type(loss).__name__} has a KL term, which needs an encoder distribution, but "
            f"model {type(model).__name__} is a deterministic autoencoder: use model=vae or "
            "model=mlp_vae with this loss, or loss=recon with this model."
        )
    optimizer = _instantiate(cfg.optimizer, "optimizer", params=model.parameters())
    return model, loss, optimizer


def train_step(model, loss, optimizer, x: torch.Tensor):
    """One optimisation step on the batch x; give back the loss's parts."""
    parts = loss(model(x), x)
    optimizer.zero_grad(set_to_none=True)
    parts.total.backward()
    optimizer.step()
    return parts


def train_epoch(
    model,
    loss,
    optimizer,
    data: ImageData,
    batch_size,
    generator,
    desc,
    progress,
    memory_format=torch.contiguous_format,
) -> dict[str, float]:
    """Run one pass over the training images; give back mean total, recon and KL in nats per image."""
    model.train()
    images = data.train_images
    sums = torch.zeros(3, device=images.device)  # total, recon, kl: kept on the device, no sync per step
    has_kl = False
    batches = shuffled_batches(len(images), batch_size, generator, images.device)
    num_batches = -(-len(images) // batch_size)
    for indices in tqdm(
        batches, total=num_batches, desc=desc, leave=False, disable=None if progress else True
    ):
        x = data.train_batch(indices).contiguous(memory_format=memory_format)
        parts = train_step(model, loss, optimizer, x)
        kl = parts.kl.detach() if parts.kl is not None else torch.zeros((), device=x.device)
        has_kl = parts.kl is not None
        sums += torch.stack([parts.total.detach(), parts.recon.detach(), kl]) * len(x)
    total, recon, kl = (sums / len(images)).tolist()
    return {"total": total, "recon": recon, "kl": kl if has_kl else None}


def _format(numbers: dict[str, float | None]) -> str:
    kl = "n/a" if numbers["kl"] is None else f"{numbers['kl']:.2f}"
    return f"total {numbers['total']:.2f}  recon {numbers['recon']:.2f}  kl {kl}"


def fit(cfg, model, loss, optimizer, data: ImageData, run_dir: Path) -> dict[str, Any]:
    """Train for cfg.trainer.epochs, logging each epoch; give back the last epoch's record."""
    generator = torch.Generator().manual_seed(cfg.seed)  # the order of the training images
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    forward_model = torch.compile(model) if cfg.trainer.compile else model  # shares model's parameters
    epochs = cfg.trainer.epochs
    record: dict[str, Any] = {}
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train = train_epoch(
            forward_model,
            loss,
            optimizer,
            data,
            cfg.trainer.batch_size,
            generator,
            desc=f"epoch {epoch}/{epochs}",
            progress=cfg.trainer.progress,
            memory_format=memory_format,
        )
        train_s = time.perf_counter() - start
        test = evaluate.evaluate_loss(model, loss, data.test_images, cfg.trainer.eval_batch_size, cfg.seed)
        record = {
            "epoch": epoch,
            "train": train,
            "test": test,
            "train_s": round(train_s, 3),
            "epoch_s": round(time.perf_counter() - start, 3),
            "train_images_per_s": round(len(data.train_images) / train_s, 1),
        }
        append_metrics(run_dir, record)
        save_checkpoint(
            run_dir,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "torch_rng": torch.get_rng_state(),
                "order_rng": generator.get_state(),
            },
        )
        log.info(
            f"epoch {epoch}/{epochs}  train: {_format(train)}  |  test: {_format(test)}  "
            f"|  {train_s:.1f} s, {record['train_images_per_s']:.0f} img/s"
        )
    return record


def draw_figures(model, data: ImageData, run_dir: Path, seed: int) -> list[str]:
    """Draw the article's figures of the test split into the run folder; give back their names."""
    name = type(model).__name__
    drawn = [
        plots.plot_reconstructions(
            data.test_images[:10] / 255,
            evaluate.reconstruct(model, data.test_images[:10]),
            run_dir / "reconstructions.png",
        ),
        plots.plot_latent_scatter(
            evaluate.encode_means(model, data.test_images),
            data.test_labels,
            run_dir / "latent_scatter.png",
            data.class_names,
            title=f"{name}: test codes ({len(data.test_images)} images)",
        ),
        plots.plot_image_grid(
            model.sample(100, torch.Generator().manual_seed(seed)),
            run_dir / "samples.png",
            title=f"{name}: decoded draws from N(0, I)",
        ),
    ]
    if model.latent_dim == 2:
        images, values = evaluate.decode_manifold(model, size=15)
        drawn.append(
            plots.plot_manifold(
                images, values, run_dir / "manifold.png", title=f"{name}: decoded grid of N(0, I) quantiles"
            )
        )
    return [path.name for path in drawn]


def run(cfg: DictConfig, run_dir: Path, parallel_jobs: int = 1) -> dict[str, Any]:
    """Train and draw one run into run_dir; give back its summary (also written to summary.json).

    trainer.threads=null leaves torch's default alone in a job of its own, and gives each of
    several parallel jobs its share of the cores, so they never oversubscribe the machine.
    """
    started = time.perf_counter()
    check_config(cfg)
    threads = cfg.trainer.threads
    if threads is None and parallel_jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // parallel_jobs)
    if threads is not None:
        torch.set_num_threads(threads)  # at the start of the job: an environment variable would come too late
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model, loss, optimizer = build(cfg, device)
    data = _instantiate(cfg.data, "data").to(device)
    log.info(
        f"{type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters), "
        f"{loss!r}, {len(data.train_images):,} training images, device {device}"
    )
    last = fit(cfg, model, loss, optimizer, data, run_dir)
    figures = draw_figures(model, data, run_dir, cfg.seed)
    summary_metrics = None
    if cfg.evaluation.enabled:
        log.info("evaluating on the test split (README: Metrics)")
        summary_metrics, evaluation_figures = evaluate.evaluate_and_draw(
            model, data, cfg.evaluation, cfg.seed, cfg.data.root, run_dir, cfg.trainer.progress, last["test"]
        )
        figures += evaluation_figures
        log.info(evaluate.one_line(summary_metrics))
    summary = {
        "status": "completed",
        "epochs": last["epoch"],
        "test": last["test"],
        "train": last["train"],
        "units": "nats per image",
        "train_images": len(data.train_images),
        "test_images": len(data.test_images),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "figures": figures,
        "metrics": summary_metrics,
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def parallel_jobs(hydra_cfg) -> int:
    """Give back how many jobs the launcher runs at once on this machine (joblib's n_jobs), else 1."""
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=None)
    if not n_jobs:
        return 1
    cores = os.cpu_count() or 1
    return max(1, cores + 1 + n_jobs if n_jobs < 0 else min(n_jobs, cores))  # joblib: -1 is every core


def _failed(error: BaseException) -> dict[str, str]:
    message = str(error) if isinstance(error, VaeLabError) else f"{type(error).__name__}: {error}"
    status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
    return {"status": status, "error": message}


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def train_app(cfg: DictConfig) -> None:
    """The Hydra app: one job of a run or of a sweep."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        summary = run(cfg, run_dir, parallel_jobs=parallel_jobs(hydra_cfg))
    except BaseException as error:
        write_json(run_dir / "summary.json", _failed(error))
        if isinstance(error, VaeLabError):
            log.error(str(error))
            if not in_sweep:
                raise SystemExit(1) from None
        elif in_sweep and isinstance(error, Exception):
            # one failed job must not stop the sweep: its folder keeps the error for `compare`
            log.exception(f"job failed: {run_dir}")
        else:
            raise  # a bug in a single run, or Ctrl-C: the record is kept, the traceback is shown
        return
    log.info(f"Run folder: {run_dir}")
    log.info(
        f"Figures: {', '.join(summary['figures'])}  |  test {_format(summary['test'])} "
        f"(nats per image)  |  wall time {summary['wall_time_s']:.0f} s"
    )


# launcher choices -> the optional plugin package each one needs (pip install -e .[launchers])
LAUNCHER_PLUGINS = {
    "joblib": "hydra_plugins.hydra_joblib_launcher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher",
    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher",
    "slurm": "hydra_plugins.hydra_submitit_launcher",
}


def require_launcher_plugin(arguments: list[str]) -> None:
    """Exit with an install hint when the command line asks for a launcher whose plugin is missing."""
    for argument in arguments:
        name = argument.partition("hydra/launcher=")[2]
        plugin = LAUNCHER_PLUGINS.get(name)
        if plugin and importlib.util.find_spec(plugin) is None:
            raise SystemExit(
                f"hydra/launcher={name} needs the optional Hydra launcher plugins, which are not installed: "
                "run `pip install -c constraints.txt -e '.[launchers]'` in the project folder."
            )


def main() -> None:
    """The command line (python -m vae_lab.train, vae-lab-train): Hydra overrides in sys.argv."""
    require_launcher_plugin(sys.argv[1:])
    train_app()


if __name__ == "__main__":
    main()
