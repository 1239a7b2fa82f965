"""Suite-wide fixtures.

``LMLOSS_TEST_AUTO_PRECISION=fp32`` (or ``bf16``) runs the suite as on a CPU without (or
with) native bf16: this process's CPU-flag reader (``lmloss.train.device``) sees a CPU of
that kind, so ``train.precision = "auto"`` picks that precision on the CPU. Tests that
start other processes (torchrun, the soak) see the real CPU.
"""

from __future__ import annotations

import os

import pytest

AUTO_PRECISION = "LMLOSS_TEST_AUTO_PRECISION"
# /proc/cpuinfo of an AVX-512 CPU without and with the bf16 matmul units
CPUINFO = {
    "fp32": "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n",
    "bf16": "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 amx_bf16\n",
}


@pytest.fixture(autouse=True)
def _auto_precision_of_the_cpu(monkeypatch):
    forced = os.environ.get(AUTO_PRECISION)
    if not forced:
        yield
        return
    if forced not in CPUINFO:
        raise pytest.UsageError(f"{AUTO_PRECISION} must be one of {list(CPUINFO)}, got {forced!r}")
    from lmloss.train import device

    monkeypatch.setattr(device, "_read_cpuinfo", lambda: CPUINFO[forced])
    device._native_bf16_here.cache_clear()  # the real CPU's answer is cached
    yield
    device._native_bf16_here.cache_clear()
