"""The Hydra entry point: compose -> check (and find the checkpoint to resume) -> build -> fit ->
draw -> evaluate.

    python -m vae_lab.train model=ae loss=recon model.latent_dim=16 trainer.epochs=3 seed=1
    python -m vae_lab.train <the same overrides> trainer.resume=true hydra.run.dir=<its run folder>

Everything a run makes lands in its Hydra run folder (outputs/<date>/<time>/). Read from
`train_app` (near the end) downwards into `run`, `fit` and `train_epoch`.
"""

import importlib.util
import itertools
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

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
from vae_lab.errors import ConfigError, RunFolderError, VaeLabError
from vae_lab.memory import hand_back_freed_memory, keep_freed_memory
from vae_lab.runs import (
    CHECKPOINT_FILE,
    SUMMARY_FILE,
    config_differences,
    load_checkpoint,
    read_hydra_files,
    read_summary,
    restore_hydra_files,
    save_checkpoint,
    unwritable,
    write_json,
    write_metrics,
)
from vae_lab.stopping import RunInterrupted, StopSignals

log = logging.getLogger("vae_lab")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # absolute: works from any module or folder
register_schemas()


def _instantiate(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """instantiate() whose failures name the config key instead of raising a traceback."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, VaeLabError):
            raise error.__cause__ from None  # a loader's DataError or ConfigError says it best
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


def train_step(model, loss, optimizer, x: torch.Tensor, precision: str = "fp32"):
    """One optimisation step on the batch x; give back the loss's parts.

    precision="bf16" runs the forward pass under bfloat16 autocast (oneDNN on CPUs with AMX or
    AVX-512 BF16, tensor cores on GPUs); the loss, the gradients' accumulation in the weights and
    the optimiser stay in fp32.
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        output = model(x)
    parts = loss(output.float() if precision == "bf16" else output, x)
    optimizer.zero_grad(set_to_none=True)
    parts.total.backward()
    optimizer.step()
    return parts


class TrainingDiverged(VaeLabError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochPosition:
    """How far the epoch under way has come; a checkpoint saved mid-epoch holds it, to go on from there."""

    epoch: int  # the epoch under way, from 1
    order_rng: torch.Tensor  # the order generator's state before this epoch's permutation was drawn
    step: int = 0  # batches done
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # (total, recon, kl) x images so far
    has_kl: bool = False
    train_s: float = 0.0  # training time spent on this epoch so far


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
    position: Optional[EpochPosition] = None,
    stop: Optional[StopSignals] = None,
    precision: str = "fp32",
) -> Optional[dict[str, Any]]:
    """Run one pass over the training images; give back mean total, recon and KL in nats per image.

    From `position` on, where given (it is updated step by step). Where `stop` is requested before
    the last batch, give back None: `position` then says where to go on.
    """
    model.train()
    images = data.train_images
    if position is None:
        position = EpochPosition(epoch=0, order_rng=generator.get_state())
    generator.set_state(position.order_rng)  # the same permutation when an epoch is taken up again
    batches = shuffled_batches(len(images), batch_size, generator, images.device)
    num_batches = -(-len(images) // batch_size)
    sums = torch.tensor(position.sums, device=images.device)  # kept on the device: no sync per step
    started = time.perf_counter()
    remaining = itertools.islice(batches, position.step, None)
    bar_off = None if progress else True
    for indices in tqdm(
        remaining, total=num_batches, initial=position.step, desc=desc, leave=False, disable=bar_off
    ):
        x = data.train_batch(indices).contiguous(memory_format=memory_format)
        parts = train_step(model, loss, optimizer, x, precision)
        if not torch.isfinite(parts.total):  # a sync per step, small beside the step itself
            raise TrainingDiverged(
                f"the training loss became {parts.total.item()} at epoch {position.epoch}, step "
                f"{position.step + 1} of {num_batches}: training stopped. Try a smaller optimizer.lr."
            )
        kl = parts.kl.detach() if parts.kl is not None else torch.zeros((), device=x.device)
        position.has_kl = parts.kl is not None
        sums += torch.stack([parts.total.detach(), parts.recon.detach(), kl]) * len(x)
        position.step += 1
        if stop is not None and stop.requested and position.step < num_batches:
            break
    position.sums = sums.tolist()
    position.train_s += time.perf_counter() - started
    if position.step < num_batches:
        return None
    total, recon, kl = (sums / len(images)).tolist()
    return {"total": total, "recon": recon, "kl": kl if position.has_kl else None}


def _format(numbers: dict[str, float | None]) -> str:
    kl = "n/a" if numbers["kl"] is None else f"{numbers['kl']:.2f}"
    return f"total {numbers['total']:.2f}  recon {numbers['recon']:.2f}  kl {kl}"


def resume_key_config(cfg: DictConfig) -> dict[str, Any]:
    """Give back the parts of the config a run must keep to be resumed: what changes its numbers."""
    kept = OmegaConf.to_container(cfg, resolve=True)
    data = {key: value for key, value in kept["data"].items() if key not in ("root", "download")}
    return {
        "model": kept["model"],
        "loss": kept["loss"],
        "optimizer": kept["optimizer"],
        "data": data,
        "seed": kept["seed"],
        "trainer": {"batch_size": kept["trainer"]["batch_size"]},
    }


class FolderInUse(RunFolderError):
    """The run folder already holds a run that this command must not overwrite."""


def resume_point(cfg: DictConfig, run_dir: Path, resume: bool, must_exist: bool) -> Optional[dict[str, Any]]:
    """Give back the checkpoint to go on from, or None to start afresh; never start over a run."""
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
    checkpoint = load_checkpoint(run_dir)
    differences = config_differences(checkpoint["config"], resume_key_config(cfg))
    if differences:
        raise ConfigError(
            f"cannot resume {run_dir}: its checkpoint was made with a different config: "
            f"{'; '.join(differences)}. Resume with the checkpoint's values, or start a new run."
        )
    return checkpoint


def fit(
    cfg,
    model,
    loss,
    optimizer,
    data: ImageData,
    run_dir: Path,
    checkpoint: Optional[dict[str, Any]] = None,
    stop: Optional[StopSignals] = None,
    logger=None,
) -> dict[str, Any]:
    """Train up to cfg.trainer.epochs from `checkpoint` (or from scratch), checkpointing every epoch and
    when a stop signal arrives; give back the last epoch's record."""
    generator = torch.Generator().manual_seed(cfg.seed)  # the order of the training images
    memory_format = torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format
    forward_model = torch.compile(model) if cfg.trainer.compile else model  # shares model's parameters
    history: list[dict[str, Any]] = []
    position: Optional[EpochPosition] = None
    if checkpoint is not None:
        history, position = restore(checkpoint, model, optimizer, generator)
        write_metrics(run_dir, history)  # drops a line written after the checkpoint, before a kill
    hydra_files = read_hydra_files(run_dir)
    key_config = resume_key_config(cfg)

    def save(position: Optional[EpochPosition]) -> None:
        save_checkpoint(
            run_dir,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": len(history),  # finished epochs
                "position": asdict(position) if position is not None else None,
                "history": history,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "order_rng": generator.get_state(),
                "config": key_config,
                "hydra_files": hydra_files,
            },
        )

    epochs = cfg.trainer.epochs
    for epoch in range(len(history) + 1, epochs + 1):
        if position is None:
            position = EpochPosition(epoch=epoch, order_rng=generator.get_state())
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
            position=position,
            stop=stop,
            precision=cfg.trainer.precision,
        )
        if train is None:  # a stop signal: keep the epoch's place
            save(position)
            stop_now(stop, run_dir, f"epoch {epoch}, step {position.step}")
        test = evaluate.evaluate_loss(model, loss, data.test_images, cfg.trainer.eval_batch_size, cfg.seed)
        history.append(
            {
                "epoch": epoch,
                "train": train,
                "test": test,
                "train_s": round(position.train_s, 3),
                "epoch_s": round(position.train_s + time.perf_counter() - start, 3),
                "train_images_per_s": round(len(data.train_images) / position.train_s, 1),
            }
        )
        position = None
        save(None)  # the checkpoint first: metrics.jsonl is rewritten from it on resume
        write_metrics(run_dir, history)
        if logger is not None:
            logger.log_epoch(history[-1])
        log.info(
            f"epoch {epoch}/{epochs}  train: {_format(train)}  |  test: {_format(test)}  "
            f"|  {history[-1]['train_s']:.1f} s, {history[-1]['train_images_per_s']:.0f} img/s"
        )
        if stop is not None and stop.requested:
            stop_now(stop, run_dir, f"the end of epoch {epoch}")
    return history[-1]


def restore(checkpoint, model, optimizer, generator) -> tuple[list[dict[str, Any]], Optional[EpochPosition]]:
    """Load a checkpoint's weights, optimiser and random states; give back its history and position."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    generator.set_state(checkpoint["order_rng"])
    torch.set_rng_state(checkpoint["torch_rng"])
    if checkpoint["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
    position = checkpoint["position"]
    log.info(
        f"resuming after epoch {checkpoint['epoch']}"
        + (f", step {position['step']} of epoch {position['epoch']}" if position else "")
    )
    return checkpoint["history"], EpochPosition(**position) if position else None


def stop_now(stop: StopSignals, run_dir: Path, where: str) -> None:
    """After the checkpoint is saved: hand the signal to submitit (it requeues the job), or stop the run."""
    log.warning(f"{stop.name} received: checkpoint saved at {where} in {run_dir}")
    hand_over = stop.hand_over()
    if hand_over is not None:
        hand_over()  # submitit requeues the job into the same folder and exits
    raise RunInterrupted(
        f"stopped by {stop.name} at {where}; the checkpoint is saved. Go on with the same command plus "
        f"`trainer.resume=true hydra.run.dir={run_dir}` (a sweep: the same command plus "
        "`hydra.sweep.dir=<its folder>`).",
        stop.signum,
    )


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


def run(
    cfg: DictConfig,
    run_dir: Path,
    parallel_jobs: int = 1,
    checkpoint: Optional[dict[str, Any]] = None,
    stop: Optional[StopSignals] = None,
) -> dict[str, Any]:
    """Train (from `checkpoint`, where given) and draw one run into run_dir; give back its summary
    (also written to summary.json).

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
    if cfg.trainer.keep_freed_memory:
        keep_freed_memory()
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model, loss, optimizer = build(cfg, device)
    data = _instantiate(cfg.data, "data").to(device)
    log.info(
        f"{type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters), "
        f"{loss!r}, {len(data.train_images):,} training images, device {device}"
    )
    logger = _instantiate(cfg.logger, "logger", run_dir=run_dir)  # besides the run folder's own files
    try:
        last = fit(cfg, model, loss, optimizer, data, run_dir, checkpoint, stop, logger)
        hand_back_freed_memory()  # what training kept for its steps: not part of evaluation's peak
        figures = draw_figures(model, data, run_dir, cfg.seed)
        summary_metrics = None
        if cfg.evaluation.enabled:
            log.info("evaluating on the test split (README: Metrics)")
            summary_metrics, evaluation_figures = evaluate.evaluate_and_draw(
                model,
                data,
                cfg.evaluation,
                cfg.seed,
                cfg.data.root,
                run_dir,
                cfg.trainer.progress,
                last["test"],
                likelihood=loss.likelihood,
            )
            figures += evaluation_figures
            log.info(evaluate.one_line(summary_metrics))
            logger.log_metrics(summary_metrics, step=last["epoch"])
        logger.log_figures([run_dir / name for name in figures], step=last["epoch"])
    finally:
        logger.close()
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
        "peak_memory_mib": peak_memory_mib(),
        "resumed_after_epoch": checkpoint["epoch"] if checkpoint is not None else None,
        "figures": figures,
        "metrics": summary_metrics,
    }
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary


def peak_memory_mib() -> Optional[int]:
    """Give back this process's peak resident memory in MiB (None where the system does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10))  # macOS: bytes, Linux: KiB


def parallel_jobs(hydra_cfg) -> int:
    """Give back how many jobs the launcher runs at once on this machine (joblib's n_jobs), else 1."""
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=None)
    if not n_jobs:
        return 1
    cores = os.cpu_count() or 1
    return max(1, cores + 1 + n_jobs if n_jobs < 0 else min(n_jobs, cores))  # joblib: -1 is every core


def _failed(error: BaseException) -> dict[str, str]:
    message = str(error) if isinstance(error, VaeLabError) else f"{type(error).__name__}: {error}"
    if isinstance(error, TrainingDiverged):
        status = "diverged"
    elif isinstance(error, (RunInterrupted, KeyboardInterrupt, SystemExit)):
        status = "interrupted"  # SystemExit: submitit requeued the job after its checkpoint
    else:
        status = "failed"
    return {"status": status, "error": message}


def _write_failure(run_dir: Path, error: BaseException) -> None:
    try:
        write_json(run_dir / SUMMARY_FILE, _failed(error))
    except VaeLabError as write_error:  # a full disk: say so, and still report the first error
        log.error(str(write_error))


def _open(cfg: DictConfig, run_dir: Path, in_sweep: bool) -> Optional[dict[str, Any]]:
    """Check the config and the run folder before anything is built; give back the checkpoint to go
    on from. A sweep's job always goes on from what its folder holds (that is how a sweep restarts)."""
    check_config(cfg)
    resume = cfg.trainer.resume or in_sweep
    return resume_point(cfg, run_dir, resume, must_exist=cfg.trainer.resume and not in_sweep)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def train_app(cfg: DictConfig) -> None:
    """The Hydra app: one job of a run or of a sweep."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    held_a_run = (run_dir / CHECKPOINT_FILE).exists()
    try:
        checkpoint = _open(cfg, run_dir, in_sweep)
    except VaeLabError as error:
        if held_a_run:  # the folder's run stays as it was: Hydra's rewritten config files are put back
            put_back_hydra_files(run_dir)
        else:
            _write_failure(run_dir, error)
        log.error(str(error))
        if not in_sweep:
            raise SystemExit(1) from None
        return
    previous = read_summary(run_dir)
    if checkpoint and previous.get("status") == "completed" and checkpoint["epoch"] >= cfg.trainer.epochs:
        restore_hydra_files(run_dir, checkpoint["hydra_files"])
        log.info(f"{run_dir} finished before ({checkpoint['epoch']} epochs): left as it is")
        return
    try:
        with StopSignals() as stop:
            summary = run(cfg, run_dir, parallel_jobs(hydra_cfg), checkpoint, stop)
    except BaseException as error:
        _write_failure(run_dir, error)
        if isinstance(error, RunInterrupted):
            log.error(str(error))
            raise SystemExit(128 + error.signum) from None  # a stop signal ends a sweep too
        if isinstance(error, OSError):
            error = unwritable(getattr(error, "filename", None) or run_dir, error)
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


def put_back_hydra_files(run_dir: Path) -> None:
    """Put back the .hydra files of the run a refused command found in run_dir, from its checkpoint."""
    try:
        restore_hydra_files(run_dir, load_checkpoint(run_dir).get("hydra_files", {}))
    except VaeLabError:
        log.warning(f"the config files in {run_dir / '.hydra'} could not be put back from its checkpoint")


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


def require_writable_output(arguments: list[str]) -> None:
    """Exit with a message when the output folder cannot be made: Hydra would fail with a traceback."""
    folder = Path("outputs")
    for argument in arguments:
        key, _, value = argument.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value and "${" not in value:
            folder = Path(value)
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise SystemExit(
            f"cannot make the output folder {folder}: {existing} is not a writable folder. Point "
            "hydra.run.dir (a run) or hydra.sweep.dir (a sweep) at a folder you can write to."
        )


def main() -> None:
    """The command line (python -m vae_lab.train, vae-lab-train): Hydra overrides in sys.argv."""
    require_launcher_plugin(sys.argv[1:])
    require_writable_output(sys.argv[1:])
    train_app()


if __name__ == "__main__":
    main()
