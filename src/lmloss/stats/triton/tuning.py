"""Opt-in autotuning of the tiles (``LMLOSS_TRITON_AUTOTUNE=1``), for a GPU loan's sweep.

The fixed tiles of :mod:`.config` avoid a tuning pause at every new shape; with the
variable set, the first call of each kernel kind at each ``(dtypes, N, V, H)`` times every
candidate of :data:`CANDIDATES` on the call's own inputs (one untimed call compiles it,
one timed call measures it; gradient kernels write into buffers of their own that are
dropped) and keeps the fastest for the rest of the process. :func:`chosen` lists what it
kept. ``LMLOSS_TRITON_TILES`` still sets the default the candidates start from.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from lmloss.stats.triton.config import KernelTiles, tiles_for

AUTOTUNE_VARIABLE = "LMLOSS_TRITON_AUTOTUNE"
_TRUE = ("1", "true", "yes", "on")

# Variations around the default of each kind: taller and wider tiles, a deeper pipeline.
CANDIDATES = {
    "forward": ({}, {"block_n": 128}, {"block_v": 256}, {"block_n": 128, "num_stages": 4}),
    "grad": (
        {},
        {"block_n": 128, "block_h": 32, "num_stages": 4},
        {"block_n": 128, "block_h": 32, "num_stages": 3},
    ),
    "forward_fp32": ({}, {"block_v": 64}, {"block_n": 32}),
    "grad_fp32": ({}, {"block_v": 128, "block_h": 16}, {"block_n": 32, "block_v": 128}),
}
INTERPRETER_CANDIDATES = ({}, {"block_n": 32})

_kept: dict[tuple, KernelTiles] = {}


def autotuning() -> bool:
    return os.environ.get(AUTOTUNE_VARIABLE, "").strip().lower() in _TRUE


def chosen() -> dict[tuple, KernelTiles]:
    """``{(kernel, kind, dtypes, N, V, H...): tiles}`` kept by the autotuner in this process."""
    return dict(_kept)


def tuned(
    kernel: str,
    kind: str,
    dtypes: tuple[torch.dtype, ...],
    shape: tuple[int, ...],
    device: torch.device,
    run: Callable[[KernelTiles], object],
    interpreting: bool,
) -> KernelTiles | None:
    """The tiles for this call of ``kernel``: None (the defaults) unless autotuning; else
    the fastest candidate of ``kind`` for ``run(tiles)`` at this key, measured once."""
    if not autotuning():
        return None
    wide = max(d.itemsize for d in dtypes) >= 4
    full_kind = f"{kind}_fp32" if wide else kind
    key = (kernel, full_kind, tuple(str(d) for d in dtypes), *shape)
    if key not in _kept:
        base = tiles_for(interpreting).tiles(kind, 4 if wide else 2)
        changes = INTERPRETER_CANDIDATES if interpreting else CANDIDATES[full_kind]
        candidates = list(dict.fromkeys(replace(base, **change) for change in changes))
        _kept[key] = min(candidates, key=lambda tiles: _seconds(run, tiles, device))
    return _kept[key]


def _seconds(run: Callable[[KernelTiles], object], tiles: KernelTiles, device) -> float:
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    run(tiles)  # compiles
    sync()
    start = time.perf_counter()
    run(tiles)
    sync()
    return time.perf_counter() - start
