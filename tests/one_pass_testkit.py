"""What the one-pass tests share (pairs: tests/preference, sequences: tests/policy).

A budget that sets the blocks' rows, a spy on the blocks the schedule ran, outputs with
their gradients compared field by field, gradients checked against central differences,
and a count of matmul FLOPs that tells 3 vocabulary matmuls (logits, then dH and dW) from
the recompute schedule's 4.
"""

from __future__ import annotations

import torch
from torch.ops import aten
from torch.utils._python_dispatch import TorchDispatchMode

from lmloss.stats import example_blocks


def budget_for(rows, vocab, dtype=torch.float32):
    """A memory budget whose whole-vocabulary tiles hold ``rows`` rows (4 live tiles)."""
    return rows * vocab * torch.finfo(dtype).bits // 8 * 4


def spy_on_blocks(monkeypatch):
    """The row blocks of every one-pass call, appended to the returned list as they run
    (an empty list: the one pass was not taken)."""
    seen = []
    run = example_blocks.eager_token_loss

    def spy(*args, blocks, **kw):
        seen.append(list(blocks))
        return run(*args, blocks=blocks, **kw)

    monkeypatch.setattr(example_blocks, "eager_token_loss", spy)
    return seen


def with_grads(out, leaves):
    """An output with the gradients of its loss w.r.t. ``leaves`` (taken once)."""
    return out, torch.autograd.grad(out.loss, leaves)


def assert_outputs_equal(got, want, rtol, atol):
    """Loss, per-example losses, metrics and gradients of two ``with_grads`` results."""
    (got, grads_got), (want, grads_want) = got, want

    def close(a, b):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=rtol, atol=atol)

    close(got.loss, want.loss)
    close(got.per_example, want.per_example)
    assert got.metrics.keys() == want.metrics.keys()
    for key, value in want.metrics.items():
        close(got.metrics[key], value)
    for a, b in zip(grads_got, grads_want):
        close(a, b)


def assert_central_differences(loss, inputs, grads, eps=1e-6, rtol=1e-6, atol=1e-8):
    """``grads`` (of ``loss(*inputs)`` w.r.t. the float64 ``inputs``) against central
    differences of the loss. ``torch.autograd.gradcheck`` takes the gradient of one output
    twice; a one-pass loss hands its gradients out once, so the differences are taken here."""
    with torch.no_grad():
        for x, grad in zip(inputs, grads):
            numeric = torch.zeros_like(x)
            for i in range(x.numel()):
                x.view(-1)[i] += eps
                up = loss(*inputs)
                x.view(-1)[i] -= 2 * eps
                down = loss(*inputs)
                x.view(-1)[i] += eps
                numeric.view(-1)[i] = (up - down) / (2 * eps)
            torch.testing.assert_close(grad, numeric, rtol=rtol, atol=atol)


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
