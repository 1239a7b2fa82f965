"""The fused engine: per-token statistics straight from hidden states and the head weight.

The only code in lmloss that iterates over the vocabulary. Logits exist one tile of
``tokens × vocab-slice`` at a time (sizes from :mod:`lmloss.stats.chunking`), in float32 —
float64 for float64 inputs — whatever the input dtype; the log-sum-exp is taken online.

Two ways to get gradients, one set of tile routines:

* :func:`token_stats_autograd` — a custom autograd Function. Its forward keeps only [N]
  vectors; its backward recomputes each tile (8·N·H·V FLOPs in all against the naive
  6·N·H·V) because the upstream gradient of each statistic is only known then.
* :func:`eager_token_loss` — for a loss that is a sum of per-token terms, the upstream
  gradient of a token is known as soon as its statistics are: tiles then span the whole
  vocabulary, and the gradients are computed in the same pass (6·N·H·V, as Liger's fused
  linear cross-entropy does). The stored gradients are scaled by the incoming one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmloss.stats.chunking import ChunkPlan
from lmloss.stats.statistics import ALL_STATISTICS, MOMENTS, Final, Tile, moments_for
from lmloss.stats.transform import LogitTransform
from lmloss.stats.workspace import Workspace

Tensor = torch.Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tile_logits(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    transform: LogitTransform,
    ws: Workspace,
) -> Tensor:
    """Logits of one tile in the compute dtype, written into the workspace's ``z`` buffer."""
    n, vc = hidden.shape[0], weight.shape[0]
    dtype = compute_dtype(hidden.dtype)
    z = ws.get("z", n, vc, dtype)
    if hidden.dtype == dtype:
        torch.mm(hidden, weight.T, out=z)
    else:  # low-precision matmul (fast on CPU and GPU), upcast before any reduction
        z.copy_(torch.mm(hidden, weight.T, out=ws.get("z_low", n, vc, hidden.dtype)))
    if bias is not None:
        z += bias.to(dtype)
    return transform.apply_(z)


def _target_columns(targets: Tensor, v0: int, v1: int) -> Tensor:
    cols = targets - v0
    return torch.where((cols >= 0) & (cols < v1 - v0), cols, -1)


def _finalize_rows(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    transform: LogitTransform,
    moment_names: tuple[str, ...],
    vocab_tile: int,
    ws: Workspace,
    table: Tensor | None = None,
) -> Final:
    """Online pass over the vocabulary for one block of tokens."""
    n, vocab = hidden.shape[0], weight.shape[0]
    dtype = compute_dtype(hidden.dtype)
    m = hidden.new_full((n,), float("-inf"), dtype=dtype)
    zy = hidden.new_zeros(n, dtype=dtype)
    acc = {name: hidden.new_zeros(n, dtype=dtype) for name in moment_names}
    for v0 in range(0, vocab, vocab_tile):
        v1 = min(v0 + vocab_tile, vocab)
        z = _tile_logits(
            hidden, weight[v0:v1], None if bias is None else bias[v0:v1], transform, ws
        )
        m_new = torch.maximum(m, z.amax(1))
        rescale = (m - m_new).exp_()
        e = torch.sub(z, m_new[:, None], out=ws.get("e", *z.shape, dtype)).exp_()
        rows_of_table = None if table is None else table[v0:v1]
        for name in moment_names:
            acc[name] = MOMENTS[name].step(acc[name], z, e, rescale, rows_of_table)
        m = m_new
        cols = _target_columns(targets, v0, v1)
        rows = (cols >= 0).nonzero().squeeze(1)
        zy[rows] = z[rows, cols[rows]]
    return Final(m=m, lse=m + acc["s"].log(), zy=zy, moments=acc, vocab=vocab)


def _slice_final(final: Final, t0: int, t1: int) -> Final:
    return Final(
        m=final.m[t0:t1],
        lse=final.lse[t0:t1],
        zy=final.zy[t0:t1],
        moments={k: v[t0:t1] for k, v in final.moments.items()},
        vocab=final.vocab,
    )


def _cat_finals(parts: list[Final]) -> Final:
    return Final(
        m=torch.cat([f.m for f in parts]),
        lse=torch.cat([f.lse for f in parts]),
        zy=torch.cat([f.zy for f in parts]),
        moments={k: torch.cat([f.moments[k] for f in parts]) for k in parts[0].moments},
        vocab=parts[0].vocab,
    )


def _raw_grad(
    z: Tensor,
    final: Final,
    cols: Tensor,
    upstream: dict[str, Tensor],
    transform: LogitTransform,
    ws: Workspace,
    table: Tensor | None = None,
) -> Tensor:
    """Gradient w.r.t. one tile's raw head outputs: Σ_stat g_stat · d(stat)/dz, chained
    through the logit transform."""
    # p shares the buffer of the forward's e: the two are never alive at once.
    p = torch.sub(z, final.lse[:, None], out=ws.get("e", *z.shape, z.dtype)).exp_()
    scratch = ws.get("scratch", *z.shape, z.dtype)
    tile = Tile(z=z, p=p, final=final, target_col=cols, scratch=scratch, table=table)
    dz = ws.get("dz", *z.shape, z.dtype).zero_()
    for name, g in upstream.items():
        ALL_STATISTICS[name].add_grad(dz, tile, g.to(z.dtype))
    return transform.backward_(dz, z, scratch)


class _Grads:
    """Gradient buffers in the compute dtype, cast to the inputs' dtypes at the end."""

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None, need: tuple[bool, ...]):
        dtype = compute_dtype(hidden.dtype)
        self.hidden = hidden.new_zeros(hidden.shape, dtype=dtype) if need[0] else None
        self.weight = weight.new_zeros(weight.shape, dtype=dtype) if need[1] else None
        self.bias = (
            weight.new_zeros(weight.shape[0], dtype=dtype) if need[2] and bias is not None else None
        )

    def add(self, da: Tensor, hidden: Tensor, weight: Tensor, rows: slice, cols: slice, ws):
        """Accumulate one tile's contribution ``da`` (gradient w.r.t. raw outputs)."""
        same = da.dtype == hidden.dtype
        da_in = da if same else ws.get("da_low", *da.shape, hidden.dtype).copy_(da)
        if self.hidden is not None:
            if same:
                self.hidden[rows].addmm_(da_in, weight[cols])
            else:
                self.hidden[rows] += da_in @ weight[cols]
        if self.weight is not None:
            if same:
                self.weight[cols].addmm_(da_in.T, hidden[rows])
            else:
                self.weight[cols] += da_in.T @ hidden[rows]
        if self.bias is not None:
            self.bias[cols] += da.sum(0)

    def out(self, hidden: Tensor, weight: Tensor, bias: Tensor | None):
        cast = lambda g, like: None if g is None else g.to(like.dtype)  # noqa: E731
        return cast(self.hidden, hidden), cast(self.weight, weight), cast(self.bias, bias)


def forward_stats(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    transform: LogitTransform,
    names: tuple[str, ...],
    plan: ChunkPlan,
    table: Tensor | None = None,
) -> tuple[dict[str, Tensor], Final]:
    """Values of the statistics ``names`` for every row, and the per-row finals."""
    moment_names = moments_for(names)
    ws = Workspace(hidden.device)
    parts = [
        _finalize_rows(
            hidden[t0 : t0 + plan.tokens],
            weight,
            bias,
            targets[t0 : t0 + plan.tokens],
            transform,
            moment_names,
            plan.vocab,
            ws,
            table,
        )
        for t0 in range(0, hidden.shape[0], plan.tokens)
    ]
    final = _cat_finals(parts)
    return {name: ALL_STATISTICS[name].value(final) for name in names}, final


def backward_stats(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    transform: LogitTransform,
    final: Final,
    upstream: dict[str, Tensor],
    plan: ChunkPlan,
    need: tuple[bool, bool, bool],
    table: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients w.r.t. hidden, weight, bias, recomputing each tile.

    Vocabulary tiles are the outer loop so each slice of the weight gradient is finished
    before the next begins.
    """
    grads = _Grads(hidden, weight, bias, need)
    ws = Workspace(hidden.device)
    n, vocab = hidden.shape[0], weight.shape[0]
    for v0 in range(0, vocab, plan.vocab):
        v1 = min(v0 + plan.vocab, vocab)
        for t0 in range(0, n, plan.tokens):
            t1 = min(t0 + plan.tokens, n)
            z = _tile_logits(
                hidden[t0:t1], weight[v0:v1], None if bias is None else bias[v0:v1], transform, ws
            )
            g = {name: u[t0:t1] for name, u in upstream.items()}
            cols = _target_columns(targets[t0:t1], v0, v1)
            rows_of_table = None if table is None else table[v0:v1]
            da = _raw_grad(z, _slice_final(final, t0, t1), cols, g, transform, ws, rows_of_table)
            grads.add(da, hidden, weight, slice(t0, t1), slice(v0, v1), ws)
    return grads.out(hidden, weight, bias)


class _TokenStatsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, transform, names, plan, table=None):
        values, final = forward_stats(hidden, weight, bias, targets, transform, names, plan, table)
        ctx.save_for_backward(hidden, weight, bias, targets, table)
        ctx.final, ctx.transform, ctx.names, ctx.plan = final, transform, names, plan
        ctx.set_materialize_grads(False)
        outputs = tuple(values[n] for n in names)
        ctx.mark_non_differentiable(
            *(o for n, o in zip(names, outputs) if ALL_STATISTICS[n].add_grad is None)
        )
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        hidden, weight, bias, targets, table = ctx.saved_tensors
        upstream = {
            name: g
            for name, g in zip(ctx.names, grad_outputs)
            if g is not None and ALL_STATISTICS[name].add_grad is not None
        }
        need = tuple(ctx.needs_input_grad[:3])
        if not upstream or not any(need):
            return (None,) * 8
        dh, dw, db = backward_stats(
            hidden, weight, bias, targets, ctx.transform, ctx.final, upstream, ctx.plan, need, table
        )
        return dh, dw, db, None, None, None, None, None


def token_stats_autograd(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    transform: LogitTransform,
    names: tuple[str, ...],
    plan: ChunkPlan,
    table: Tensor | None = None,
) -> dict[str, Tensor]:
    """Differentiable statistics of 2-D ``hidden`` rows whose targets are all valid.

    ``table``: the frozen ``[V, D]`` table of the ``expectation`` statistic (no gradient).
    """
    outputs = _TokenStatsFunction.apply(
        hidden, weight, bias, targets, transform, names, plan, table
    )
    return dict(zip(names, outputs))


TokenLoss = Callable[[dict[str, Tensor], slice], Tensor]


def _eager_pass(hidden, weight, bias, targets, transform, names, token_loss, plan, need, table):
    grads = _Grads(hidden, weight, bias, need)
    ws = Workspace(hidden.device)
    moment_names = moments_for(names)
    dtype = compute_dtype(hidden.dtype)
    total = hidden.new_zeros((), dtype=dtype)
    values_out: dict[str, list[Tensor]] = {name: [] for name in names}
    vocab = weight.shape[0]
    for t0 in range(0, hidden.shape[0], plan.tokens):
        t1 = min(t0 + plan.tokens, hidden.shape[0])
        y = targets[t0:t1]
        final = _finalize_rows(
            hidden[t0:t1], weight, bias, y, transform, moment_names, vocab, ws, table
        )
        # One tile spans the vocabulary, so its logits are still in the workspace.
        z = ws.get("z", t1 - t0, vocab, dtype)
        leaves = {
            name: ALL_STATISTICS[name]
            .value(final)
            .detach()
            .requires_grad_(ALL_STATISTICS[name].add_grad is not None)
            for name in names
        }
        with torch.enable_grad():
            loss = token_loss(leaves, slice(t0, t1))
            diff = [n for n in names if leaves[n].requires_grad]
            g = torch.autograd.grad(loss, [leaves[n] for n in diff], allow_unused=True)
        total += loss.detach()
        for name in names:
            values_out[name].append(leaves[name].detach())
        upstream = {n: gi for n, gi in zip(diff, g) if gi is not None}
        if upstream and any(need):
            cols = _target_columns(y, 0, vocab)
            da = _raw_grad(z, final, cols, upstream, transform, ws, table)
            grads.add(da, hidden, weight, slice(t0, t1), slice(0, vocab), ws)
    values = {name: torch.cat(parts) for name, parts in values_out.items()}
    return total, values, grads.out(hidden, weight, bias)


class _WithPrecomputedGrads(torch.autograd.Function):
    """Returns ``total``; its backward hands out gradients computed during the forward."""

    @staticmethod
    def forward(ctx, total, hidden, weight, bias, grads):
        ctx.grads = grads
        return total.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        if ctx.grads is None:
            raise RuntimeError("the gradients of a one-pass loss can be taken only once")
        # Scaled in place and released: a copy would double the weight-gradient memory.
        scaled = tuple(None if g is None else g.mul_(grad_total.to(g.dtype)) for g in ctx.grads)
        ctx.grads = None
        return (None, *scaled, None)


def eager_token_loss(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    transform: LogitTransform,
    names: tuple[str, ...],
    token_loss: TokenLoss,
    plan: ChunkPlan,
    expect: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``Σ_blocks token_loss(stats of the block, rows of the block)``, gradients in one pass.

    ``token_loss`` receives the statistics of a block of rows (leaf tensors) and the slice
    of those rows, and returns the block's scalar contribution; it must not mix rows of
    different blocks (a batch-level normalizer is a constant it closes over). ``plan``
    must span the whole vocabulary. ``expect`` is the frozen ``[V, D]`` table of the
    ``expectation`` statistic, when it is among ``names``. Returns the differentiable total
    and the detached statistics of every row.
    """
    if plan.vocab != weight.shape[0]:
        raise ValueError("eager_token_loss needs a plan whose vocabulary tile spans the vocabulary")
    need = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
    with torch.no_grad():
        total, values, grads = _eager_pass(
            hidden.detach(),
            weight.detach(),
            None if bias is None else bias.detach(),
            targets,
            transform,
            names,
            token_loss,
            plan,
            need,
            None if expect is None else expect.detach(),
        )
    if any(need):
        total = _WithPrecomputedGrads.apply(total, hidden, weight, bias, grads)
    return total, values
