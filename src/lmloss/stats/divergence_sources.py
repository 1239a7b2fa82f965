"""Where the two-model engine gets each model's logits, one tile at a time.

A model is either an LM head (hidden rows and the head weight: a tile is a matmul) or
already-computed logits ``[N, V]`` (a tile is a slice). Both hand out tiles in the compute
dtype with the logit transform applied, and take back the gradient of a tile w.r.t. those
transformed logits. A tile lives in a reused buffer (:class:`~lmloss.stats.workspace.Workspace`)
and is valid until the same source hands out the next one.
"""

from __future__ import annotations

import torch

from lmloss.stats.engine import compute_dtype
from lmloss.stats.transform import LogitTransform
from lmloss.stats.workspace import Workspace

Tensor = torch.Tensor


class _HeadGrads:
    """Gradient buffers of a head in the compute dtype, cast to the inputs' dtypes at the end."""

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None, need: tuple[bool, ...]):
        dtype = compute_dtype(hidden.dtype)
        self.hidden = torch.zeros(hidden.shape, dtype=dtype) if need[0] else None
        self.weight = torch.zeros(weight.shape, dtype=dtype) if need[1] else None
        self.bias = (
            torch.zeros(weight.shape[0], dtype=dtype) if need[2] and bias is not None else None
        )

    def add(self, da: Tensor, hidden: Tensor, weight: Tensor, rows: slice, cols: slice) -> None:
        """Accumulate a tile's gradient ``da`` w.r.t. the raw head outputs."""
        if da.dtype == hidden.dtype:  # accumulate in place, no temporary
            if self.hidden is not None:
                self.hidden[rows].addmm_(da, weight[cols])
            if self.weight is not None:
                self.weight[cols].addmm_(da.T, hidden[rows])
        else:  # low-precision inputs multiply in their own dtype
            da_in = da.to(hidden.dtype)
            if self.hidden is not None:
                self.hidden[rows] += da_in @ weight[cols]
            if self.weight is not None:
                self.weight[cols] += da_in.T @ hidden[rows]
        if self.bias is not None:
            self.bias[cols] += da.sum(0)

    def out(self, hidden: Tensor, weight: Tensor, bias: Tensor | None):
        cast = lambda g, like: None if g is None else g.to(like.dtype)  # noqa: E731
        return cast(self.hidden, hidden), cast(self.weight, weight), cast(self.bias, bias)


class HeadSource:
    """Logits ``transform(hidden @ weight.T + bias)`` of the rows of 2-D ``hidden``."""

    def __init__(
        self,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        transform: LogitTransform,
        dtype: torch.dtype,
    ):
        self.hidden, self.weight, self.bias = hidden, weight, bias
        self.transform, self.dtype = transform, dtype
        self._ws = Workspace(hidden.device)
        self._grads: _HeadGrads | None = None

    @property
    def vocab(self) -> int:
        return self.weight.shape[0]

    def tile(self, t0: int, t1: int, v0: int, v1: int) -> Tensor:
        hidden, weight = self.hidden[t0:t1], self.weight[v0:v1]
        z = self._ws.get("z", t1 - t0, v1 - v0, self.dtype)
        if hidden.dtype == self.dtype:
            torch.mm(hidden, weight.T, out=z)
        else:  # low-precision matmul, upcast before any reduction
            z.copy_(hidden @ weight.T)
        if self.bias is not None:
            z += self.bias[v0:v1].to(self.dtype)
        return self.transform.apply_(z)

    def start_grads(self, need: tuple[bool, ...]) -> None:
        """Allocate gradient buffers for (hidden, weight, bias) where ``need`` says so."""
        self._grads = _HeadGrads(self.hidden, self.weight, self.bias, tuple(need) + (False,) * 3)

    def add_grad(self, dz: Tensor, z: Tensor, t0: int, t1: int, v0: int, v1: int) -> None:
        """Accumulate the gradient of a tile given ``dz`` w.r.t. its transformed logits ``z``."""
        da = self.transform.backward_(dz, z, self._ws.get("scratch", *z.shape, z.dtype))
        self._grads.add(da, self.hidden, self.weight, slice(t0, t1), slice(v0, v1))

    def grads(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return self._grads.out(self.hidden, self.weight, self.bias)


class LogitsSource:
    """Tiles sliced from full logits ``[N_all, V]`` at the selected ``rows``."""

    def __init__(self, logits: Tensor, rows: Tensor, transform: LogitTransform, dtype: torch.dtype):
        self.logits, self.rows, self.transform, self.dtype = logits, rows, transform, dtype
        self._grad: Tensor | None = None

    @property
    def vocab(self) -> int:
        return self.logits.shape[-1]

    def tile(self, t0: int, t1: int, v0: int, v1: int) -> Tensor:
        # Advanced indexing copies, so the in-place transform never touches the caller's tensor.
        raw = self.logits[self.rows[t0:t1], v0:v1].to(self.dtype)
        return self.transform.apply_(raw)

    def start_grads(self, need: tuple[bool, ...]) -> None:
        self._grad = torch.zeros(self.logits.shape, dtype=self.dtype) if need[0] else None

    def add_grad(self, dz: Tensor, z: Tensor, t0: int, t1: int, v0: int, v1: int) -> None:
        if self._grad is not None:
            da = self.transform.backward_(dz, z, torch.empty_like(z))
            self._grad[self.rows[t0:t1], v0:v1] += da

    def grads(self) -> tuple[Tensor | None]:
        return (None if self._grad is None else self._grad.to(self.logits.dtype),)
