"""Per-tile elementwise work fused by ``torch.compile``, with the eager function as fallback.

Run eagerly, a kernel's per-tile formulas are a dozen separate passes over a
``tokens × vocab`` tile, each writing a temporary as large as the tile: on a CPU that
memory traffic costs about as much as the matmuls. Compiled, they become one or two loops
that keep the intermediates in registers. Compiling costs seconds (measured in
``docs/benchmarks.md``), so it is worth it only for calls whose tiles hold many logits:

``LMLOSS_COMPILE`` = ``auto`` (default: compile calls with at least
:data:`MIN_COMPILE_LOGITS` logits, ``N × V``), ``1`` (always), ``0`` (never). A function
whose compilation fails (no C++ compiler, an unsupported platform) warns once and runs
eagerly from then on.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

COMPILE_VARIABLE = "LMLOSS_COMPILE"
# Below this many logits per call the eager passes take well under a second: a user
# would wait longer for the compiler than for the call.
MIN_COMPILE_LOGITS = 2**24


def compile_wanted(n_rows: int, vocab: int) -> bool:
    """Whether a call over ``n_rows × vocab`` logits should run compiled tile functions."""
    mode = os.environ.get(COMPILE_VARIABLE, "auto").strip().lower()
    if mode in ("0", "false", "off", "no"):
        return False
    if mode in ("1", "true", "on", "yes"):
        return True
    if mode != "auto":
        raise ValueError(f"{COMPILE_VARIABLE} must be auto, 1 or 0, got {mode!r}")
    return n_rows * vocab >= MIN_COMPILE_LOGITS


class Fusable:
    """A per-tile function that runs compiled when asked, else (or if compiling fails) eagerly."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self._compiled: Callable | None = None
        self._failed = False

    def __call__(self, compiled: bool, *args, **kwargs):
        if not compiled or self._failed:
            return self.fn(*args, **kwargs)
        if self._compiled is None:
            # Row counts vary between blocks: one graph for every tile shape.
            self._compiled = torch.compile(self.fn, dynamic=True)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as error:  # any compiler failure: the eager function is exact
            self._failed = True
            warnings.warn(
                f"torch.compile of {self.fn.__name__} failed ({type(error).__name__}: {error}); "
                f"running it eagerly (set {COMPILE_VARIABLE}=0 to skip the attempt)",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.fn(*args, **kwargs)
