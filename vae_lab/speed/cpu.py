"""What this machine's CPU offers the speed options: its name and whether it computes bf16 natively.

bf16 autocast (`speed.precision=bf16`) is faster than fp32 only on CPUs with native bf16 arithmetic
(AMX-BF16 or AVX512-BF16, which oneDNN's kernels use); elsewhere oneDNN converts to and from fp32 and
it is slower (docs/speed.md, "Which options pay on which CPU").
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}  # /proc/cpuinfo flag: its name


@dataclass(frozen=True)
class CpuFeatures:
    name: str
    flags: Optional[frozenset[str]]  # None where the system does not say (no /proc/cpuinfo)

    @property
    def native_bf16(self) -> Optional[bool]:
        """True where the CPU has AMX-BF16 or AVX512-BF16, False where it has neither, None if unknown."""
        return None if self.flags is None else bool(self.flags & BF16_FLAGS.keys())

    def describe(self) -> str:
        """One line: the name, the bf16 features, e.g. 'AMX-BF16 no, AVX512-BF16 no', torch's kernels."""
        if self.flags is None:
            bf16 = "bf16 features unknown"
        else:
            bf16 = ", ".join(
                f"{label} {'yes' if flag in self.flags else 'no'}" for flag, label in BF16_FLAGS.items()
            )
        return f"{self.name}; {bf16}; torch's kernels {torch.backends.cpu.get_cpu_capability()}"


def cpu_features(cpuinfo: Path = CPUINFO) -> CpuFeatures:
    """Read the CPU's name and flags from /proc/cpuinfo (Linux); elsewhere the flags are unknown."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return CpuFeatures(name="CPU", flags=None)
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's lines
    flags = fields.get("flags")
    return CpuFeatures(
        name=fields.get("model name", "CPU"), flags=None if flags is None else frozenset(flags.split())
    )
