"""A staged learning rate (Burda et al. 2016, section 5): stage i = 0, 1, 2, ... lasts base^i epochs at
optimizer.lr * decay^i; with base 3 and decay 10^(-1/7), eight stages are their 3,280 passes.

The rate follows from the epoch alone, so a resumed run trains at the same rates as an uninterrupted one.
"""

from dataclasses import dataclass
from typing import Optional

from vae_lab.errors import ConfigError


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
