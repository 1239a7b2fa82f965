"""Tile sizes and launch settings of the Triton kernels.

GPU tiles (``BLOCK_N × BLOCK_V`` logits, walking the hidden size ``BLOCK_H`` at a time):
64 tokens × 128 vocabulary entries × 64 hidden for 16-bit inputs. The float32
accumulator of a tile is 32 KiB, 32 registers per thread over 8 warps; one pipeline stage
of bf16 operands is (64 + 128) × 64 × 2 B = 24 KiB of shared memory, so 3 stages fit an
A100 or H100 with room to spare. float32 operands take twice the bytes, so they walk the
hidden size 32 at a time: with 64 and TF32 the gradient kernel needs 240 KiB of shared
memory for sm_90, over the H100's 227 KiB per block (``benchmarks/triton_gpu.py --compile-only``
compiles every kernel for a GPU architecture without one and checks this).

How the peers choose: Cut Cross-Entropy autotunes over Triton's matmul configurations
(128 × 128 × 32 with 3–4 stages and 4–8 warps among the usual winners), pruned by a
roofline model and keyed on the shapes; Liger hands the matmuls to cuBLAS and only sizes
its token chunks. A fixed configuration here avoids an autotuning pause on every new
number of tokens; 64-token blocks halve the register pressure of CCE's 128 while keeping
the 128-wide vocabulary blocks, and give twice the token blocks (the forward splits the
vocabulary further until about ``target_programs`` programs run). The gradient kernel's
atomic adds to the weight gradient happen once per token block.

Under Triton's interpreter (CPU) every block op is a NumPy call per program: the tiles
are the smallest ``tl.dot`` accepts (16), so tests with V = 37 still cross several tiles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

GRAD_FILTER_VARIABLE = "LMLOSS_TRITON_GRAD_FILTER"
TILES_VARIABLE = "LMLOSS_TRITON_TILES"


@dataclass(frozen=True)
class KernelTiles:
    """Block sizes (powers of two, ≥ 16) and launch settings of one kind of kernel."""

    block_n: int
    block_v: int
    block_h: int
    num_warps: int
    num_stages: int


KINDS = ("forward", "grad", "forward_fp32", "grad_fp32")


@dataclass(frozen=True)
class TileConfig:
    """Tiles of the forward sweeps (moments, pair sums) and of the gradient sweeps, for
    16-bit operands and for float32 operands."""

    forward: KernelTiles
    grad: KernelTiles
    forward_fp32: KernelTiles
    grad_fp32: KernelTiles
    # Forward kernels split the vocabulary until about this many programs run at once.
    target_programs: int
    # Gradient kernels walk their tiles in groups of this many token blocks.
    group_n: int

    def tiles(self, kind: str, element_size: int) -> KernelTiles:
        """The tiles of ``kind`` (``"forward"`` or ``"grad"``) for operands of
        ``element_size`` bytes."""
        return getattr(self, f"{kind}_fp32" if element_size >= 4 else kind)


GPU_TILES = TileConfig(
    forward=KernelTiles(block_n=64, block_v=128, block_h=64, num_warps=8, num_stages=3),
    grad=KernelTiles(block_n=128, block_v=128, block_h=32, num_warps=8, num_stages=4),
    forward_fp32=KernelTiles(block_n=64, block_v=128, block_h=32, num_warps=8, num_stages=3),
    grad_fp32=KernelTiles(block_n=64, block_v=64, block_h=32, num_warps=8, num_stages=3),
    target_programs=528,
    group_n=8,
)
_SMALLEST = KernelTiles(block_n=16, block_v=16, block_h=16, num_warps=1, num_stages=1)
INTERPRETER_TILES = TileConfig(*(_SMALLEST,) * len(KINDS), target_programs=4, group_n=2)


def tiles_for(interpreting: bool) -> TileConfig:
    """The default tiles, with the overrides of ``LMLOSS_TRITON_TILES`` applied."""
    base = INTERPRETER_TILES if interpreting else GPU_TILES
    return with_overrides(base, os.environ.get(TILES_VARIABLE, ""))


def with_overrides(base: TileConfig, text: str) -> TileConfig:
    """``base`` with ``text``'s comma-separated ``key=value`` settings applied: keys
    ``<kind>.<field>`` (kinds :data:`KINDS`, fields of :class:`KernelTiles`; ``<field>``
    alone sets every kind), ``target_programs`` and ``group_n``. Block sizes are powers
    of two ≥ 16."""
    tile_keys = [f.name for f in fields(KernelTiles)]
    kinds = {kind: getattr(base, kind) for kind in KINDS}
    top: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        value = _positive_int(raw.strip()) if sep else None
        kind, _, field = key.rpartition(".")
        known = field in tile_keys or (not kind and field in ("target_programs", "group_n"))
        if value is None or (kind and kind not in kinds) or not known:
            raise ValueError(
                f"{TILES_VARIABLE} takes comma-separated key=value with keys "
                f"[{'|'.join(KINDS)}.]{{{', '.join(tile_keys)}}}, target_programs, group_n "
                f"and positive integer values; got {item!r}"
            )
        if field.startswith("block_") and (value < 16 or value & (value - 1)):
            raise ValueError(f"{TILES_VARIABLE}: {key} must be a power of two ≥ 16, got {value}")
        if field in tile_keys:
            for name in [kind] if kind else KINDS:
                kinds[name] = replace(kinds[name], **{field: value})
        else:
            top[field] = value
    return replace(base, **kinds, **top)


def _positive_int(raw: str) -> int | None:
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value > 0 else None


def grad_filter() -> float:
    """Cut Cross-Entropy's gradient filter (``LMLOSS_TRITON_GRAD_FILTER``; default 0: off):
    skip the two matmuls of a tile whose logit gradient is at most this times each row's
    upstream magnitude everywhere.

    The comparison is relative: for a loss ``Σ_n g_n ℓ_n`` a tile is dropped when every
    ``|∂ℓ_n/∂z_v|`` is at most ``eps`` (for cross-entropy, ``|p_v − 1[v=y]|``), whatever
    the scale of ``g`` (``1/N`` for a mean). ``2**-12`` drops what a bf16 weight gradient
    could not represent next to an entry of order 1 (CCE's choice for bf16); the
    gradient is then no longer exact.
    """
    value = os.environ.get(GRAD_FILTER_VARIABLE, "0")
    try:
        eps = float(value)
    except ValueError:
        raise ValueError(f"{GRAD_FILTER_VARIABLE} must be a number ≥ 0, got {value!r}") from None
    if not eps >= 0:
        raise ValueError(f"{GRAD_FILTER_VARIABLE} must be a number ≥ 0, got {value!r}")
    return eps
