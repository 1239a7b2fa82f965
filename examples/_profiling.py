"""Wall time and peak resident memory of a call, measured inside the current process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    # Writing 5 to clear_refs resets the process's peak-RSS mark (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run ``fn()``; return its result, seconds, and peak RSS above the start in MB (Linux)."""
    base = _rss_mb()
    _reset_peak()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, max(0.0, _peak_mb() - base)
