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
from lmloss.stats.statistics import MOMENTS, STATISTICS, Final, Tile, moments_for
from lmloss.stats.transform import LogitTransform

Tensor = torch.Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tile_logits(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, transform: LogitTransform
) -> Tensor:
    raw = hidden @ weight.T
    raw = raw.to(compute_dtype(hidden.dtype))
    if bias is not None:
        raw += bias.to(raw.dtype)
    return transform.apply_(raw)


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
) -> Final:
    """Online pass over the vocabulary for one block of tokens."""
    n, vocab = hidden.shape[0], weight.shape[0]
    dtype = compute_dtype(hidden.dtype)
    m = hidden.new_full((n,), float("-inf"), dtype=dtype)
    zy = hidden.new_zeros(n, dtype=dtype)
    acc = {name: hidden.new_zeros(n, dtype=dtype) for name in moment_names}
    for v0 in range(0, vocab, vocab_tile):
        v1 = min(v0 + vocab_tile, vocab)
        z = _tile_logits(hidden, weight[v0:v1], None if bias is None else bias[v0:v1], transform)
        m_new = torch.maximum(m, z.amax(1))
        rescale = (m - m_new).exp_()
        e = (z - m_new[:, None]).exp_()
        for name in moment_names:
            acc[name] = MOMENTS[name].update(acc[name], z, e, rescale)
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


def _logit_grad(z: Tensor, final: Final, cols: Tensor, upstream: dict[str, Tensor]) -> Tensor:
    """Σ_stat g_stat · d(stat)/dz for one tile, then through the logit transform's chain."""
    p = (z - final.lse[:, None]).exp_()
    tile = Tile(z=z, p=p, final=final, target_col=cols)
    dz = torch.zeros_like(z)
    for name, g in upstream.items():
        STATISTICS[name].add_grad(dz, tile, g.to(z.dtype))
    return dz


class _Grads:
    """Gradient buffers in the compute dtype, cast to the inputs' dtypes at the end."""

    def __init__(self, hidden: Tensor, weight: Tensor, bias: Tensor | None, need: tuple[bool, ...]):
        dtype = compute_dtype(hidden.dtype)
        self.hidden = torch.zeros(hidden.shape, dtype=dtype) if need[0] else None
        self.weight = torch.zeros(weight.shape, dtype=dtype) if need[1] else None
        self.bias = (
            torch.zeros(weight.shape[0], dtype=dtype) if need[2] and bias is not None else None
        )

    def add(self, da: Tensor, hidden: Tensor, weight: Tensor, t0: int, t1: int, v0: int, v1: int):
        da_in = da.to(hidden.dtype)
        if self.hidden is not None:
            self.hidden[t0:t1] += da_in @ weight[v0:v1]
        if self.weight is not None:
            self.weight[v0:v1] += da_in.T @ hidden[t0:t1]
        if self.bias is not None:
            self.bias[v0:v1] += da.sum(0)

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
) -> tuple[dict[str, Tensor], Final]:
    """Values of the statistics ``names`` for every row, and the per-row finals."""
    moment_names = moments_for(names)
    parts = [
        _finalize_rows(
            hidden[t0 : t0 + plan.tokens],
            weight,
            bias,
            targets[t0 : t0 + plan.tokens],
            transform,
            moment_names,
            plan.vocab,
        )
        for t0 in range(0, hidden.shape[0], plan.tokens)
    ]
    final = _cat_finals(parts)
    return {name: STATISTICS[name].value(final) for name in names}, final


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
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients w.r.t. hidden, weight, bias, recomputing each tile.

    Vocabulary tiles are the outer loop so each slice of the weight gradient is finished
    before the next begins.
    """
    grads = _Grads(hidden, weight, bias, need)
    n, vocab = hidden.shape[0], weight.shape[0]
    for v0 in range(0, vocab, plan.vocab):
        v1 = min(v0 + plan.vocab, vocab)
        for t0 in range(0, n, plan.tokens):
            t1 = min(t0 + plan.tokens, n)
            h = hidden[t0:t1]
            z = _tile_logits(h, weight[v0:v1], None if bias is None else bias[v0:v1], transform)
            g = {name: u[t0:t1] for name, u in upstream.items()}
            dz = _logit_grad(
                z, _slice_final(final, t0, t1), _target_columns(targets[t0:t1], v0, v1), g
            )
            grads.add(transform.backward_(dz, z), hidden, weight, t0, t1, v0, v1)
    return grads.out(hidden, weight, bias)


class _TokenStatsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, transform, names, plan):
        values, final = forward_stats(hidden, weight, bias, targets, transform, names, plan)
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.final, ctx.transform, ctx.names, ctx.plan = final, transform, names, plan
        ctx.set_materialize_grads(False)
        outputs = tuple(values[n] for n in names)
        ctx.mark_non_differentiable(
            *(o for n, o in zip(names, outputs) if STATISTICS[n].add_grad is None)
        )
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        hidden, weight, bias, targets = ctx.saved_tensors
        upstream = {
            name: g
            for name, g in zip(ctx.names, grad_outputs)
            if g is not None and STATISTICS[name].add_grad is not None
        }
        need = tuple(ctx.needs_input_grad[:3])
        if not upstream or not any(need):
            return (None,) * 7
        dh, dw, db = backward_stats(
            hidden, weight, bias, targets, ctx.transform, ctx.final, upstream, ctx.plan, need
        )
        return dh, dw, db, None, None, None, None


def token_stats_autograd(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    transform: LogitTransform,
    names: tuple[str, ...],
    plan: ChunkPlan,
) -> dict[str, Tensor]:
    """Differentiable statistics of 2-D ``hidden`` rows whose targets are all valid."""
    outputs = _TokenStatsFunction.apply(hidden, weight, bias, targets, transform, names, plan)
    return dict(zip(names, outputs))


TokenLoss = Callable[[dict[str, Tensor], slice], Tensor]


def _eager_pass(hidden, weight, bias, targets, transform, names, token_loss, plan, need):
    grads = _Grads(hidden, weight, bias, need)
    moment_names = moments_for(names)
    total = hidden.new_zeros((), dtype=compute_dtype(hidden.dtype))
    values_out: dict[str, list[Tensor]] = {name: [] for name in names}
    vocab = weight.shape[0]
    for t0 in range(0, hidden.shape[0], plan.tokens):
        t1 = min(t0 + plan.tokens, hidden.shape[0])
        h, y = hidden[t0:t1], targets[t0:t1]
        z = _tile_logits(h, weight, bias, transform)
        final = _finalize_tile(z, y, moment_names, vocab)
        leaves = {
            name: STATISTICS[name]
            .value(final)
            .detach()
            .requires_grad_(STATISTICS[name].add_grad is not None)
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
            dz = _logit_grad(z, final, _target_columns(y, 0, vocab), upstream)
            grads.add(transform.backward_(dz, z), hidden, weight, t0, t1, 0, vocab)
    values = {name: torch.cat(parts) for name, parts in values_out.items()}
    return total, values, grads.out(hidden, weight, bias)


def _finalize_tile(z: Tensor, targets: Tensor, moment_names: tuple[str, ...], vocab: int) -> Final:
    m = z.amax(1)
    e = (z - m[:, None]).exp_()
    acc = {
        name: MOMENTS[name].update(torch.zeros_like(m), z, e, torch.zeros_like(m))
        for name in moment_names
    }
    zy = z.gather(1, targets[:, None]).squeeze(1)
    return Final(m=m, lse=m + acc["s"].log(), zy=zy, moments=acc, vocab=vocab)


class _WithPrecomputedGrads(torch.autograd.Function):
    """Returns ``total``; its backward hands out gradients computed during the forward."""

    @staticmethod
    def forward(ctx, total, hidden, weight, bias, grads):
        ctx.grads = grads
        return total.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total):
        scaled = tuple(None if g is None else g * grad_total.to(g.dtype) for g in ctx.grads)
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
) -> tuple[Tensor, dict[str, Tensor]]:
    """``Σ_blocks token_loss(stats of the block, rows of the block)``, gradients in one pass.

    ``token_loss`` receives the statistics of a block of rows (leaf tensors) and the slice
    of those rows, and returns the block's scalar contribution; it must not mix rows of
    different blocks (a batch-level normalizer is a constant it closes over). ``plan``
    must span the whole vocabulary. Returns the differentiable total and the detached
    statistics of every row.
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
        )
    if any(need):
        total = _WithPrecomputedGrads.apply(total, hidden, weight, bias, grads)
    return total, values
