"""Trained rows in and out: the engines run on the rows whose target counts, and these
helpers put their per-row values back at the full ``leading`` shape."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

Tensor = torch.Tensor


def scatter_rows(
    values: Mapping[str, Tensor], rows: Tensor, leading: tuple[int, ...]
) -> dict[str, Tensor]:
    """Each ``[len(rows), *trailing]`` value at positions ``rows`` of a zero
    ``[*leading, *trailing]`` tensor (differentiable w.r.t. the values)."""
    n = math.prod(leading)
    out = {}
    for name, value in values.items():
        trailing = tuple(value.shape[1:])
        if rows.numel() == n:  # every row counts, in order
            out[name] = value.reshape(*leading, *trailing)
        else:
            full = value.new_zeros((n, *trailing)).index_put((rows,), value)
            out[name] = full.reshape(*leading, *trailing)
    return out


def zeros_connected(
    shapes: Mapping[str, tuple[int, ...]], dtype: torch.dtype, *inputs: Tensor | None
) -> dict[str, Tensor]:
    """No row counts: zeros of the given shapes that still belong to the graph of
    ``inputs`` (so ``backward`` works and gives zero gradients)."""
    present = [t for t in inputs if t is not None]
    zero = sum(t.reshape(-1)[:0].sum().to(dtype) for t in present)
    device = present[0].device if present else None
    return {
        name: torch.zeros(shape, dtype=dtype, device=device) + zero
        for name, shape in shapes.items()
    }
