"""The C kernels of vae_lab/speed/kernels.c, compiled at first use and loaded with ctypes.

The shared library is built once per machine with the system's C compiler (`$CC`, else `cc`) and
kept in `$VAE_LAB_CACHE` (default `~/.cache/vae_lab`), named by a hash of the source, the compiler
command and the CPU (it is compiled for this CPU with -march=native: a cluster's nodes of other
CPUs build their own). Where it cannot be built (no compiler, no OpenMP, an unwritable cache),
`cpu_kernels()` logs why once and gives back None, and the layers that use it fall back to
torch's own operations: the same results, slower on CPU.
"""

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import torch

from vae_lab.speed.cpu import cpu_features

log = logging.getLogger("vae_lab")
FALLBACK = "vae_lab's layers run as torch operations instead (the same results, slower on CPU; docs/speed.md)"

SOURCE = Path(__file__).with_name("kernels.c")
# -fno-trapping-math: no floating-point traps are wanted, and without it gcc keeps the kernels'
# comparisons as branches where the CPU lacks AVX-512 (a loop of branches, not of vectors)
FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC"]
_P, _N, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
SIGNATURES = {  # argument types of each function in kernels.c
    "relu_shifted_sums": [_P, _N, _N, _P, _P, _P, _I],
    "normalise_and_drop": [_P, _P, _P, _N, _N, _P, _P, _I, _F, _I],
    "backward_sums": [_P, _P, _P, _N, _N, _P, _I, _F, _P, _P, _I],
    "backward_input": [_P, _P, _P, _P, _N, _N, _P, _P, _P, _P, _I, _F, _I],
    "one_channel_conv": [_P, _P, _F, _P, _N, _N, _N, _N, _I],
    "one_channel_conv_input_grad": [_P, _P, _P, _N, _N, _N, _N, _I],
    "one_channel_conv_taps_grad": [_P, _P, _P, _N, _N, _N, _N, _I],
    "counter_words": [_P, _N, ctypes.c_uint64, _I],
}


def cache_dir() -> Path:
    return Path(os.environ.get("VAE_LAB_CACHE") or Path.home() / ".cache" / "vae_lab")


def _library_path(compiler: str) -> Path:
    key = hashlib.sha256(SOURCE.read_bytes())
    cpu = cpu_features()  # the library is compiled for this CPU's name and flags
    key.update(" ".join([compiler, *FLAGS, cpu.name, *sorted(cpu.flags or ())]).encode())
    return cache_dir() / f"kernels-{key.hexdigest()[:16]}.so"


def _build(compiler: str, target: Path) -> None:
    """Compile into a temporary file beside target, then rename: jobs that build at once never load
    a half-written library."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        result = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True, timeout=300
        )
        if result.returncode != 0:
            first_error = next((line for line in result.stderr.splitlines() if "error" in line), "")
            raise OSError(f"{compiler} exited with {result.returncode}: {first_error or result.stderr[:300]}")
        os.replace(built, target)


@functools.cache
def cpu_kernels() -> Optional[SimpleNamespace]:
    """The compiled kernels, built on first call, as functions that take tensors (passed by address)
    and numbers; None (logged once) where they cannot be built."""
    compiler = os.environ.get("CC") or "cc"
    path = _library_path(compiler)
    try:
        if not path.exists():
            if shutil.which(compiler) is None:
                log.warning(f"no C compiler ({compiler!r}, from $CC or 'cc') found: {FALLBACK}")
                return None
            log.info(f"compiling vae_lab's CPU kernels into {path}")
            _build(compiler, path)
        library = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as error:
        log.warning(f"vae_lab's CPU kernels could not be built or loaded ({error}): {FALLBACK}")
        return None
    kernels = {}
    for name, argtypes in SIGNATURES.items():
        function = getattr(library, name)
        function.argtypes, function.restype = argtypes, None
        kernels[name] = _taking_tensors(function)
    return SimpleNamespace(**kernels)


def _taking_tensors(function):
    def call(*args):
        function(*(arg.data_ptr() if isinstance(arg, torch.Tensor) else arg for arg in args))

    return call
