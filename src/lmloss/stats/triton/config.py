"""Tile sizes and launch settings of the Triton kernels.

GPU tiles (``BLOCK_N × BLOCK_V`` logits, walking the hidden size ``BLOCK_H`` at a time):
64 tokens × 128 vocabulary entries × 64 hidden. The float32 accumulator of a tile is
32 KiB, 32 registers per thread over 8 warps; one pipeline stage of bf16 operands is
(64 + 128) × 64 × 2 B = 24 KiB of shared memory, so 3 stages fit an A100/H100 with room to
spare. Those are the sizes Cut Cross-Entropy's kernels settle on for heads of H = 2k–8k
(128-wide vocabulary blocks, 32–64 wide hidden chunks) and what Liger's chunking aims at
(keep the matmul in tensor cores, never the whole ``[N, V]``). The backward's atomics
contend on the weight gradient once per token block, so larger token blocks (fewer
atomics) win over more programs.

Under Triton's interpreter (CPU) every block op is a NumPy call per program: the tiles
are the smallest ``tl.dot`` accepts (16), so tests with V = 37 still cross several tiles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GRAD_FILTER_VARIABLE = "LMLOSS_TRITON_GRAD_FILTER"


@dataclass(frozen=True)
class TileConfig:
    """Block sizes (powers of two, ≥ 16) and launch settings of every kernel."""

    block_n: int
    block_v: int
    block_h: int
    num_warps: int
    num_stages: int
    # Forward kernels split the vocabulary until about this many programs run at once.
    target_programs: int


GPU_TILES = TileConfig(
    block_n=64, block_v=128, block_h=64, num_warps=8, num_stages=3, target_programs=528
)
INTERPRETER_TILES = TileConfig(
    block_n=16, block_v=16, block_h=16, num_warps=1, num_stages=1, target_programs=4
)


def tiles_for(interpreting: bool) -> TileConfig:
    return INTERPRETER_TILES if interpreting else GPU_TILES


def grad_filter() -> float:
    """Cut Cross-Entropy's gradient filter: skip the two matmuls of a tile whose logit
    gradient is below this everywhere (``LMLOSS_TRITON_GRAD_FILTER``; default 0: off).

    ``2**-12`` drops what a bf16 weight gradient could not represent next to an entry of
    order 1 (CCE's choice for bf16); the result is then no longer exact.
    """
    value = os.environ.get(GRAD_FILTER_VARIABLE, "0")
    try:
        eps = float(value)
    except ValueError:
        raise ValueError(f"{GRAD_FILTER_VARIABLE} must be a number ≥ 0, got {value!r}") from None
    if not eps >= 0:
        raise ValueError(f"{GRAD_FILTER_VARIABLE} must be a number ≥ 0, got {value!r}")
    return eps
