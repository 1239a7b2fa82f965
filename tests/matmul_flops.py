"""Counting the FLOPs of matrix products: how the one-pass tests tell 3 vocabulary matmuls
from 4 (logits, then dH and dW; the recompute schedule multiplies the logits again)."""

from __future__ import annotations

from torch.ops import aten
from torch.utils._python_dispatch import TorchDispatchMode


class MatmulFlops(TorchDispatchMode):
    """FLOPs of the matrix products (mm, addmm; out= and in place too) run inside."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (aten.mm, aten.addmm, aten.addmm_):
            a, b = args[-2], args[-1]
            self.flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
        return func(*args, **(kwargs or {}))


def matmul_flops(run):
    """FLOPs of the matrix products of ``run()`` and of its loss's backward."""
    with MatmulFlops() as counter:
        run().loss.backward()
    return counter.flops
