"""Reusable tile buffers.

A fresh ``[tokens, vocab-slice]`` tensor per tile would be a fresh large allocation, which
the C allocator hands back to the OS on free, so every tile would page-fault its memory in
again (measured: about a third of the non-matmul time). One buffer per role, allocated at
the largest tile size and viewed at the size of each tile, avoids that.
"""

from __future__ import annotations

import torch


class Workspace:
    """Named buffers, each reused for every tile of one engine call."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
        """A ``[rows, cols]`` view of the buffer ``name`` (contents undefined)."""
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < rows * cols:
            buf = torch.empty(rows * cols, dtype=dtype, device=self.device)
            self._buffers[name] = buf
        return buf[: rows * cols].view(rows, cols)
