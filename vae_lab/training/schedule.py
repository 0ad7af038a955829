"""What changes from one epoch to the next, from the epoch alone, so that a resumed run trains as an
uninterrupted one: the KL term's weight under a warm-up, and the learning rate in stages.

KL warm-up (Bowman et al. 2016; Sonderby et al. 2016): the KL term's weight in the training loss rises
linearly, epoch by epoch, from 0 in the first epoch to the loss's own `kl_weight` from epoch
`warmup_epochs + 1` on. Only the training steps see the lowered weight; the test and validation splits
are measured with the loss as configured, so their numbers (and early stopping) stay the negative ELBO.

Staged learning rate (Burda et al. 2016, section 5): stage i = 0, 1, 2, ... lasts base^i epochs at
optimizer.lr * decay^i; with base 3 and decay 10^(-1/7), eight stages are their 3,280 passes.
"""

import copy
from dataclasses import dataclass
from typing import Any, Optional

from vae_lab.errors import ConfigError


def kl_factor(epoch: int, warmup_epochs: Optional[int]) -> float:
    """Give back the share of the KL weight that epoch `epoch` (from 1) trains with."""
    if warmup_epochs is None:
        return 1.0
    return min(1.0, (epoch - 1) / warmup_epochs)


def check_warmup_loss(loss, warmup_epochs: Optional[int]) -> None:
    """Refuse a warm-up for a loss that has no KL weight to lower."""
    if warmup_epochs is not None and not hasattr(loss, "kl_weight"):
        raise ConfigError(
            f"trainer.kl_warmup_epochs={warmup_epochs} lowers a loss's kl_weight, and "
            f"{type(loss).__name__} has none: use a loss with a KL term (loss=elbo), or "
            "trainer.kl_warmup_epochs=null"
        )


def warmed_up(loss, epoch: int, warmup_epochs: Optional[int]):
    """Give back the loss that epoch `epoch` trains with: `loss` itself once the warm-up is over, else a
    copy whose kl_weight is lowered."""
    factor = kl_factor(epoch, warmup_epochs)
    if factor == 1.0:
        return loss
    lowered = copy.copy(loss)
    lowered.kl_weight = loss.kl_weight * factor
    return lowered


@dataclass(frozen=True)
class LrStages:
    base: int  # stage i lasts base^i epochs
    decay: float  # the rate is multiplied by it from one stage to the next

    @classmethod
    def of(cls, base: Optional[int], decay: float) -> Optional["LrStages"]:
        """The schedule of trainer.lr_stages, or None (the optimizer's rate throughout) where base is null."""
        if base is None:
            return None
        if not (isinstance(base, int) and base >= 1) or not (0 < decay <= 1):
            raise ConfigError(
                f"trainer.lr_stages.base={base!r}, decay={decay!r} is not a schedule: base must be a "
                "positive integer (stage i lasts base^i epochs) and decay a number in (0, 1]"
            )
        return cls(base, float(decay))

    def stage_of(self, epoch: int) -> int:
        """Give back the stage (from 0) that epoch `epoch` (from 1) belongs to."""
        stage, last_epoch = 0, 1
        while epoch > last_epoch:
            stage += 1
            last_epoch += self.base**stage
        return stage

    def epochs_through(self, stage: int) -> int:
        """Give back how many epochs stages 0..stage last together."""
        return sum(self.base**i for i in range(stage + 1))

    def rate(self, epoch: int, lr: float) -> float:
        """Give back the learning rate of epoch `epoch` for a configured rate `lr`."""
        return lr * self.decay ** self.stage_of(epoch)


def set_learning_rate(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass(frozen=True)
class EpochSchedule:
    """A run's warm-up and learning-rate stages; with neither, every epoch trains as configured."""

    kl_warmup_epochs: Optional[int] = None  # None: the loss's own KL weight throughout
    lr_stages: Optional[LrStages] = None  # None: the optimizer's rate throughout
    lr: Optional[float] = None  # the optimizer's configured rate, which lr_stages lowers stage by stage

    def begin(self, epoch: int, loss, optimizer) -> tuple[Any, dict[str, float]]:
        """Set the optimizer's rate for epoch `epoch`; give back the loss it trains with and what the
        epoch's record notes of the two (the KL weight under a warm-up, the rate under stages)."""
        check_warmup_loss(loss, self.kl_warmup_epochs)
        trained_with = warmed_up(loss, epoch, self.kl_warmup_epochs)
        noted = {}
        if self.kl_warmup_epochs is not None:
            noted["kl_weight"] = trained_with.kl_weight  # train.total holds the KL at this weight
        if self.lr_stages is not None:
            set_learning_rate(optimizer, self.lr_stages.rate(epoch, self.lr))
            noted["lr"] = optimizer.param_groups[0]["lr"]
        return trained_with, noted
