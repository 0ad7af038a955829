"""The speed options of conf/speed/*.yaml: how a run computes, never what it computes."""

from dataclasses import asdict, dataclass, fields
from typing import Any

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class SpeedOptions:
    """Every speed option, off by default (speed=off: the article's plain layers, NCHW, fp32).

    The layer options swap the plain model's layers for faster ones with the same parameters
    (vae_lab/speed/transform.py); the others set how the training step runs (vae_lab/training/loop.py).
    """

    fast_dropout: bool = False  # dropout masks from 16-bit counter-based random integers (FastDropout)
    fused_blocks: bool = False  # each encoder block's ReLU, BatchNorm and dropout as one C kernel pass
    fast_transpose: bool = False  # transposed convs add their bias apart (a faster backward on CPU)
    one_channel_kernel: bool = False  # the last transposed conv to one channel as C kernels on CPU
    channels_last: bool = False  # NHWC weights and batches
    compile: bool = False  # torch.compile the training forward pass
    precision: str = "fp32"  # bf16: bfloat16 autocast of the forward pass
    keep_freed_memory: bool = False  # glibc keeps freed memory for the next step (Linux)

    @classmethod
    def of(cls, settings: Any) -> "SpeedOptions":
        """The options of a config node (conf/speed/*.yaml), a dict, or SpeedOptions themselves."""
        if isinstance(settings, SpeedOptions):
            return settings
        return cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# What a difference in each option does to a run's numbers, for the resume's message
CHANGES_DROPOUT_MASKS = ("fast_dropout",)
CHANGES_NUMBERS = ("precision",)


def what_differs_means(differing: set[str]) -> str:
    """Give back how far a run resumed with other speed options (these) departs from an uninterrupted one."""
    if differing & set(CHANGES_DROPOUT_MASKS):
        return "dropout's masks come from another random stream from here on, so the numbers differ"
    if differing & set(CHANGES_NUMBERS):
        return "the forward pass runs in another precision from here on, so the numbers differ"
    return "the same computation, with other float rounding from here on"
