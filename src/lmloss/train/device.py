"""Where a run computes and how: the device, the autocast precision, the CPU threads.

The recipe's ``train.device``, ``train.precision`` and ``train.threads`` are requests;
:func:`resolve` turns them into what this machine will do, once, before any model
loads, so that a request the machine cannot meet (``device = "cuda"`` without CUDA)
stops the run with one clear line instead of a failure deep inside a model.

* device ``auto``: this process's GPU when CUDA is available (under torchrun the
  ``LOCAL_RANK``-th), else the CPU.
* precision ``auto``: bf16 autocast where bf16 matmuls are native — a CUDA device that
  supports bf16, or a CPU with AVX512-BF16 or AMX (read from the CPU's flags). Elsewhere
  bf16 is emulated and several times slower than fp32 (measured on a 2-core Xeon without
  AVX512-BF16: 45 against 147 GFLOP/s), so auto picks fp32 there.
* threads ``0``: the cores this process may run on (its CPU affinity), shared evenly by
  the ranks torchrun starts on this node.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import lru_cache

import torch

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Compute:
    """The resolved device, precision (``fp32`` / ``bf16``) and CPU threads of a run."""

    device: torch.device
    precision: str
    threads: int
    reason: str = ""  # why precision = auto chose what it chose

    def autocast(self) -> AbstractContextManager:
        """bf16 autocast for this device's type, or nothing for fp32."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def describe(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"device {self.device}, precision {self.precision}{why}, {self.threads} CPU threads"


def check_device_spec(spec: str) -> None:
    if not isinstance(spec, str) or not DEVICE_PATTERN.match(spec):
        raise ValueError(f"train.device must be auto, cpu, cuda or cuda:N, got {spec!r}")


def resolve_device(
    spec: str,
    *,
    local_rank: int = 0,
    cuda_available: Callable[[], bool] | None = None,
    cuda_count: Callable[[], int] | None = None,
) -> torch.device:
    """The ``torch.device`` of ``train.device``; a CUDA request without CUDA is an error.
    ``cuda_available``/``cuda_count`` default to torch's (tests inject others)."""
    check_device_spec(spec)
    has_cuda = (cuda_available or torch.cuda.is_available)()
    if spec == "cpu" or (spec == "auto" and not has_cuda):
        return torch.device("cpu")
    if not has_cuda:
        raise ValueError(
            f"train.device = {spec!r} but CUDA is not available to this process "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
            "use train.device = 'cpu' or 'auto'"
        )
    index = int(spec.split(":")[1]) if ":" in spec else local_rank
    count = (cuda_count or torch.cuda.device_count)()
    if index >= count:
        raise ValueError(
            f"train.device = {spec!r} asks for GPU {index} but this process sees {count} "
            "(under torchrun, each rank takes the GPU of its LOCAL_RANK)"
        )
    return torch.device("cuda", index)


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of ``/proc/cpuinfo`` text (x86 ``flags``, ARM ``Features``)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


def _read_cpuinfo() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return None


def _bf16_matmul_is_faster(size: int = 256, repeats: int = 5) -> bool:
    """Time one small matmul in both dtypes (where the CPU's flags cannot be read)."""
    a = torch.randn(size, size)
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        x @ x  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            x @ x
        timings[dtype] = time.perf_counter() - start
    return timings[torch.bfloat16] < timings[torch.float32]


@lru_cache(maxsize=1)
def _native_bf16_here() -> bool:
    text = _read_cpuinfo()
    if text is None or not cpu_flags(text):
        return _bf16_matmul_is_faster()
    return cpu_has_native_bf16(cpu_flags(text))


def cpu_has_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU multiplies bf16 natively (AVX512-BF16 or AMX). ``flags``: the CPU's
    feature flags; None reads this machine's (or times a matmul when they are unreadable)."""
    if flags is None:
        return _native_bf16_here()
    return any(flag in set(flags) for flag in NATIVE_BF16_FLAGS)


def resolve_precision(
    spec: str,
    device: torch.device,
    *,
    cpu_bf16: Callable[[], bool] | None = None,
    cuda_bf16: Callable[[], bool] | None = None,
) -> tuple[str, str]:
    """``(precision, reason)`` of ``train.precision`` on ``device``; explicit values stay.
    ``cpu_bf16``/``cuda_bf16`` default to this machine's capabilities (tests inject others)."""
    if spec != "auto":
        return spec, ""
    if device.type == "cuda":
        if (cuda_bf16 or torch.cuda.is_bf16_supported)():
            return "bf16", "auto: the GPU supports bf16"
        return "fp32", "auto: the GPU lacks bf16"
    if (cpu_bf16 or cpu_has_native_bf16)():
        return "bf16", "auto: the CPU multiplies bf16 natively"
    return "fp32", "auto: no AVX512-BF16/AMX on this CPU, bf16 would be emulated"


def available_cores() -> int:
    """The cores this process may run on (its affinity mask; the CPU count elsewhere)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_threads(
    requested: int, *, local_ranks: int = 1, cores: Callable[[], int] | None = None
) -> int:
    """``train.threads`` when set, else this process's share of the cores it may use."""
    if requested > 0:
        return requested
    return max(1, (cores or available_cores)() // max(1, local_ranks))


def resolve(device: str, precision: str, threads: int) -> Compute:
    """Resolve a run's ``train.device``/``precision``/``threads`` for this process (torchrun's
    ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` choose the GPU and the share of the cores)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    resolved = resolve_device(device, local_rank=local_rank)
    chosen, reason = resolve_precision(precision, resolved)
    return Compute(
        resolved, chosen, resolve_threads(threads, local_ranks=local_ranks), reason=reason
    )


def to_device(value, device: torch.device):
    """The tensors of a batch moved to ``device``, also inside dicts, lists, tuples and
    dataclasses (``Sequences``): batches are assembled on the host."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        moved = {
            f.name: to_device(getattr(value, f.name), device) for f in dataclasses.fields(value)
        }
        return dataclasses.replace(value, **moved)
    return value
