"""Where the engine gets a model's logits, one tile at a time, and where their gradients go.

A model is either an LM head (hidden rows and the head weight: a tile is a matmul) or
already-computed logits ``[N, V]`` (a tile is a slice, the form a teacher may take). Both
hand out tiles in the compute dtype with the full :class:`LogitTransform` applied (scale,
soft cap, temperature), and take back the gradient of a tile w.r.t. those transformed
logits, chained through the transform into float32 (float64) gradient buffers that are
cast to the inputs' dtypes at the end. A head's tile lives in a reused buffer
(:class:`~lmloss.stats.workspace.Workspace`) and is valid until the same source hands out
the next one. Every buffer is made on the inputs' device.

A block of rows whose gradients wait on a loss over all of them (a preference pair, a
sequence) may be larger than a tile: :meth:`HeadSource.keep_rows` then multiplies the block
once and keeps the product in the inputs' dtype (half the bytes of a float32 tile in bf16);
the block's tiles are cut from it, their logit gradients overwrite it, and
:meth:`HeadSource.release_rows` turns it into the block's hidden and weight gradients with
one matmul each. Sources without a head (logits) have nothing to keep.

A :class:`HeadSpec` / :class:`LogitsSpec` says how to build a source from the tensors the
autograd machinery passes around (3 for a head: hidden, weight, bias; 1 for logits).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmloss.stats.transform import LogitTransform
from lmloss.stats.workspace import Workspace

Tensor = torch.Tensor


# The low-precision copy of a tile: the matmul's output on the way in, the logit gradient
# on the way out; never both at once, so one buffer serves both.
_LOW = "low"
# The kept product of a block's rows (inputs' dtype), then their logit gradients.
_KEPT = "kept"
# vocabulary rows of the weight gradient added per low-precision product
_WEIGHT_GRAD_ROWS = 4096


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _zeros_like_in(like: Tensor, shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    return like.new_zeros(tuple(shape), dtype=dtype)


def _cast(grad: Tensor | None, like: Tensor | None) -> Tensor | None:
    return None if grad is None else grad.to(like.dtype)


class HeadSource:
    """Logits ``transform(hidden @ weight.T + bias)`` of the rows of 2-D ``hidden``."""

    n_inputs = 3

    def __init__(
        self, hidden: Tensor, weight: Tensor, bias: Tensor | None, transform: LogitTransform
    ):
        self.hidden, self.weight, self.bias = hidden, weight, bias
        self.transform = transform
        self.dtype = compute_dtype(hidden.dtype)
        self.ws = Workspace(hidden.device)
        self._grads: list[Tensor | None] = [None, None, None]
        self._kept: tuple[int, Tensor] | None = None  # (first row, product of the kept rows)
        self._kept_grads = False  # whether logit gradients have replaced the kept product

    @property
    def vocab(self) -> int:
        return self.weight.shape[0]

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    def tile(self, t0: int, t1: int, v0: int, v1: int) -> Tensor:
        hidden, weight = self.hidden[t0:t1], self.weight[v0:v1]
        z = self.ws.get("z", t1 - t0, v1 - v0, self.dtype)
        if self._kept is not None:
            start, kept = self._kept
            z.copy_(kept[t0 - start : t1 - start, v0:v1])
        elif hidden.dtype == self.dtype:
            torch.mm(hidden, weight.T, out=z)
        else:  # low-precision matmul (fast on CPU and GPU), upcast before any reduction
            low = self.ws.get(_LOW, t1 - t0, v1 - v0, hidden.dtype)
            z.copy_(torch.mm(hidden, weight.T, out=low))
        if self.bias is not None:
            z += self.bias[v0:v1].to(self.dtype)
        return self.transform.apply_(z)

    def start_grads(self, need: Sequence[bool]) -> None:
        """Gradient buffers for (hidden, weight, bias) where ``need`` says so."""
        shapes = (self.hidden.shape, self.weight.shape, self.weight.shape[:1])
        present = (self.hidden, self.weight, self.bias)
        self._grads = [
            _zeros_like_in(self.hidden, shape, self.dtype) if wanted and t is not None else None
            for wanted, shape, t in zip(need, shapes, present)
        ]

    def add_grad(self, dz: Tensor, z: Tensor, t0: int, t1: int, v0: int, v1: int) -> None:
        """Accumulate a tile's gradient given ``dz`` w.r.t. its transformed logits ``z``
        (both are overwritten)."""
        d_hidden, d_weight, d_bias = self._grads
        da = self.transform.backward_(dz, z)
        hidden, weight = self.hidden[t0:t1], self.weight[v0:v1]
        if self._kept is not None:  # the matmuls wait for the whole block (release_rows)
            start, kept = self._kept
            kept[t0 - start : t1 - start, v0:v1].copy_(da)
            self._kept_grads = True
        elif da.dtype == hidden.dtype:  # accumulate in place, no temporary
            if d_hidden is not None:
                d_hidden[t0:t1].addmm_(da, weight)
            if d_weight is not None:
                d_weight[v0:v1].addmm_(da.T, hidden)
        else:  # low-precision inputs multiply in their own dtype
            da_low = self.ws.get(_LOW, *da.shape, hidden.dtype).copy_(da)
            self._add_matmul_grads(da_low, t0, t1, v0, v1)
        if d_bias is not None:
            d_bias[v0:v1] += da.sum(0)

    def _add_matmul_grads(self, da_low: Tensor, t0: int, t1: int, v0: int, v1: int) -> None:
        """Hidden and weight gradients of a low-precision logit gradient (float32 sums)."""
        d_hidden, d_weight, _ = self._grads
        hidden, weight = self.hidden[t0:t1], self.weight[v0:v1]
        if d_hidden is not None:
            d_hidden[t0:t1] += da_low @ weight
        if d_weight is not None:
            # in row slices: a [V, H] low-precision product would be a second weight
            # gradient's worth of memory before it is added to the float32 one
            for r0 in range(0, v1 - v0, _WEIGHT_GRAD_ROWS):
                r1 = min(r0 + _WEIGHT_GRAD_ROWS, v1 - v0)
                d_weight[v0 + r0 : v0 + r1] += da_low[:, r0:r1].T @ hidden

    def keep_rows(self, t0: int, t1: int) -> None:
        """Multiply rows ``t0:t1`` once and keep the product, in the inputs' dtype, until
        :meth:`release_rows`; their tiles are cut from it and their logit gradients
        written over it."""
        kept = self.ws.get(_KEPT, t1 - t0, self.vocab, self.hidden.dtype)
        torch.mm(self.hidden[t0:t1], self.weight.T, out=kept)
        self._kept, self._kept_grads = (t0, kept), False

    def release_rows(self) -> None:
        """The hidden and weight gradients of the kept rows, from their logit gradients."""
        start, kept = self._kept
        self._kept = None
        if not self._kept_grads:  # the block's loss gave its rows no gradient
            return
        d_hidden, d_weight, _ = self._grads
        t1 = start + kept.shape[0]
        if kept.dtype != self.dtype:
            self._add_matmul_grads(kept, start, t1, 0, self.vocab)
            return
        if d_hidden is not None:
            d_hidden[start:t1].addmm_(kept, self.weight)
        if d_weight is not None:
            d_weight.addmm_(kept.T, self.hidden[start:t1])

    def grads(self) -> tuple[Tensor | None, ...]:
        return tuple(
            _cast(g, t) for g, t in zip(self._grads, (self.hidden, self.weight, self.bias))
        )


class LogitsSource:
    """Tiles sliced from full logits ``[N_all, V]`` at the selected ``rows``."""

    n_inputs = 1

    def __init__(self, logits: Tensor, rows: Tensor, transform: LogitTransform):
        self.logits, self.rows, self.transform = logits, rows, transform
        self.dtype = compute_dtype(logits.dtype)
        self._grad: Tensor | None = None

    @property
    def vocab(self) -> int:
        return self.logits.shape[-1]

    @property
    def device(self) -> torch.device:
        return self.logits.device

    def tile(self, t0: int, t1: int, v0: int, v1: int) -> Tensor:
        # Advanced indexing copies, so the in-place transform never touches the caller's tensor.
        raw = self.logits[self.rows[t0:t1], v0:v1].to(self.dtype)
        return self.transform.apply_(raw)

    def start_grads(self, need: Sequence[bool]) -> None:
        self._grad = _zeros_like_in(self.logits, self.logits.shape, self.dtype) if need[0] else None

    def keep_rows(self, t0: int, t1: int) -> None:
        """Nothing to keep: every tile is a slice of the logits."""

    def release_rows(self) -> None:
        """Nothing kept (see :meth:`keep_rows`)."""

    def add_grad(self, dz: Tensor, z: Tensor, t0: int, t1: int, v0: int, v1: int) -> None:
        if self._grad is not None:
            self._grad[self.rows[t0:t1], v0:v1] += self.transform.backward_(dz, z)

    def grads(self) -> tuple[Tensor | None]:
        return (_cast(self._grad, self.logits),)


@dataclass(frozen=True)
class HeadSpec:
    """A model given as a head: its three inputs are ``hidden, weight, bias``."""

    transform: LogitTransform
    n_inputs = 3

    def build(self, hidden: Tensor, weight: Tensor, bias: Tensor | None) -> HeadSource:
        return HeadSource(hidden, weight, bias, self.transform)


@dataclass(frozen=True)
class LogitsSpec:
    """A model given as full logits; its one input is ``logits``, read at ``rows``."""

    transform: LogitTransform
    rows: Tensor
    n_inputs = 1

    def build(self, logits: Tensor) -> LogitsSource:
        return LogitsSource(logits, self.rows, self.transform)


Spec = HeadSpec | LogitsSpec
Source = HeadSource | LogitsSource


def split_inputs(specs: Sequence[Spec], items: Sequence) -> list[tuple]:
    """``items`` (one per input, in order) cut into each model's share."""
    out, start = [], 0
    for spec in specs:
        out.append(tuple(items[start : start + spec.n_inputs]))
        start += spec.n_inputs
    return out


def build_sources(specs: Sequence[Spec], inputs: Sequence[Tensor | None]) -> list[Source]:
    return [spec.build(*share) for spec, share in zip(specs, split_inputs(specs, inputs))]
