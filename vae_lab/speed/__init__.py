"""Speed as one transform applied after the model is built: conf/speed/*.yaml's options.

    model = speed_up(model, SpeedOptions.of(cfg.speed))   # the same parameters, faster layers

The fast layers (layers.py), their C kernels (kernels.c, built at first use by kernels.py), the CPU
probes (cpu.py), the allocator's setting (memory.py) and the plain loop the bench measures against
(plain_vae.py) live here; vae_lab/models holds the plain layers only. docs/speed.md says what each
option does, when it pays and how to turn it off.
"""

from vae_lab.speed.options import SpeedOptions
from vae_lab.speed.transform import speed_up

__all__ = ["SpeedOptions", "speed_up"]
