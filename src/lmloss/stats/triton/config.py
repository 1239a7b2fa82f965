"""Tile sizes and launch settings of the Triton kernels.

A kernel works on ``BLOCK_N × BLOCK_V`` logits, walking the hidden size ``BLOCK_H`` at a
time. The defaults come from the compile report (:mod:`.report`: the variants the
launcher runs, compiled for sm_90 with ``ptxas -v``), none spilling in a single-model
kernel:

* 16-bit operands — forward 64 × 128 × 64, 8 warps, 3 stages (198 registers, 72 KiB of
  shared memory); gradient 64 × 128 × 64, 8 warps, 3 stages (164–198 registers; the
  deterministic weight sweep 255, no spill). 128 × 128 × 32 with 4 stages (Cut
  Cross-Entropy's usual winner) fits the plain bf16 gradient (238 registers) and would
  halve the atomic adds into the weight gradient, but spills 8 B with float16 and
  ``sum_sq_probs`` and 112 B in the deterministic weight sweep: it is the first override
  to time on a GPU, and an autotuning candidate. A 128-token forward fits one model (254
  registers) but spills 124 B in the two-head moments kernel.
* float32 operands — exact (``ieee``) products run on FMA units and need more registers:
  forward 64 × 128 × 32; gradient 64 × 64 × 32 (64 × 128 × 32 spilled 16 B).

How the peers choose: Cut Cross-Entropy autotunes over Triton's matmul configurations
(128 × 128 × 32 with 3–4 stages and 4–8 warps among the usual winners), pruned by a
roofline model and keyed on the shapes; Liger hands the matmuls to cuBLAS and only sizes
its token chunks. Fixed tiles here avoid an autotuning pause at every new number of
tokens; ``LMLOSS_TRITON_TILES`` overrides them (:func:`with_overrides`) and
``LMLOSS_TRITON_AUTOTUNE=1`` times candidates per shape (:mod:`.tuning`), so one GPU
loan can sweep.

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
    grad=KernelTiles(block_n=64, block_v=128, block_h=64, num_warps=8, num_stages=3),
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
