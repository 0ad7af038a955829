"""KL warm-up (Bowman et al. 2016; Sonderby et al. 2016): the KL term's weight in the training loss rises
linearly, epoch by epoch, from 0 in the first epoch to the loss's own `kl_weight` from epoch
`warmup_epochs + 1` on.

Only the training steps see the lowered weight; the test and validation splits are measured with the
loss as configured, so their numbers (and early stopping) stay the negative ELBO. The weight follows
from the epoch alone, so a resumed run trains with the same weights as an uninterrupted one.
"""

import copy
from typing import Optional

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
