"""The Hydra entry point: compose -> check -> build -> fit -> evaluate -> draw.

    python -m vae_lab.train model=ae loss=recon model.latent_dim=16 trainer.epochs=3 seed=1

Everything a run makes lands in its Hydra run folder (outputs/<date>/<time>/).
"""

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from vae_lab import evaluate, plots
from vae_lab.config import check_config, register_schemas
from vae_lab.data import ImageData, shuffled_batches, to_float
from vae_lab.errors import ConfigError, VaeLabError
from vae_lab.runs import append_metrics, save_checkpoint, write_json

log = logging.getLogger("vae_lab")
register_schemas()


def resolve_device(name: str) -> torch.device:
    """Give back the torch device for `auto`, `cpu`, `cuda` or `cuda:N`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device={name!r} was asked for, but torch sees no CUDA device: use device=cpu or auto."
        )
    return torch.device(name)


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
    loss = _instantiate(cfg.loss, "loss")
    if loss.requires_posterior and not model.is_variational:
        raise ConfigError(
            f"loss {type(loss).__name__} has a KL term, which needs an encoder distribution, but "
            f"model {type(model).__name__} is a deterministic autoencoder: use model=vae or "
            "model=mlp_vae with this loss, or loss=recon with this model."
        )
    optimizer = _instantiate(cfg.optimizer, "optimizer", params=model.parameters())
    return model, loss, optimizer


def train_epoch(model, loss, optimizer, images, batch_size, generator, desc, progress) -> dict[str, float]:
    """Run one pass over the training images; give back mean total, recon and KL in nats per image."""
    model.train()
    sums = torch.zeros(3, device=images.device)  # total, recon, kl: kept on the device, no sync per step
    has_kl = False
    batches = shuffled_batches(len(images), batch_size, generator, images.device)
    num_batches = -(-len(images) // batch_size)
    for indices in tqdm(
        batches, total=num_batches, desc=desc, leave=False, disable=None if progress else True
    ):
        x = to_float(images[indices])
        parts = loss(model(x), x)
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        optimizer.step()
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
    epochs = cfg.trainer.epochs
    record: dict[str, Any] = {}
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train = train_epoch(
            model,
            loss,
            optimizer,
            data.train_images,
            cfg.trainer.batch_size,
            generator,
            desc=f"epoch {epoch}/{epochs}",
            progress=cfg.trainer.progress,
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


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train and draw one run into run_dir; give back its summary (also written to summary.json)."""
    started = time.perf_counter()
    check_config(cfg)
    if cfg.trainer.threads is not None:
        torch.set_num_threads(cfg.trainer.threads)
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
    summary = {
        "status": "completed",
        "epochs": last["epoch"],
        "test": last["test"],
        "train": last["train"],
        "units": "nats per image",
        "train_images": len(data.train_images),
        "test_images": len(data.test_images),
        "device": str(device),
        "wall_time_s": round(time.perf_counter() - started, 2),
        "figures": figures,
    }
    write_json(run_dir / "summary.json", summary)
    return summary


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = run(cfg, run_dir)
    except VaeLabError as error:
        write_json(run_dir / "summary.json", {"status": "failed", "error": str(error)})
        log.error(str(error))
        raise SystemExit(1) from None
    except BaseException as error:  # a bug or Ctrl-C: keep the record, then let it surface as usual
        write_json(
            run_dir / "summary.json", {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        )
        raise
    log.info(f"Run folder: {run_dir}")
    log.info(
        f"Figures: {', '.join(summary['figures'])}  |  test {_format(summary['test'])} "
        f"(nats per image)  |  wall time {summary['wall_time_s']:.0f} s"
    )


if __name__ == "__main__":
    main()
