"""A few logits per token, and the teacher's top-k, without ``[N, V]`` logits.

* :func:`head_logits_at` — raw head outputs ``hidden · W[ids] + b[ids]`` at ``k`` ids per
  row (the sparse-teacher support, the Plackett–Luce order), differentiable. Only the rows'
  ``k`` weight vectors are touched; the backward scatters into the weight gradient.
* :func:`top_k_with_lse` — a model's ``k`` largest transformed logits per row and its
  log-sum-exp, in one pass over vocabulary tiles (no gradient);
* :func:`head_top_k_logprobs` — the same from a head: the ``k`` most probable ids of each
  row and their log-probabilities (a teacher's sparse top-k, precomputed for distillation).
"""

from __future__ import annotations

import torch

from lmloss.stats.chunking import ChunkPlan, default_budget, plan_chunks
from lmloss.stats.schedule import online_moments, token_blocks
from lmloss.stats.tiles import HeadSource, Source, compute_dtype
from lmloss.stats.transform import LogitTransform
from lmloss.stats.workspace import Workspace

Tensor = torch.Tensor


def _row_chunk(n: int, k: int, hidden_size: int, itemsize: int, budget: int | None) -> int:
    """Rows per chunk so the gathered ``[rows, k, H]`` weights take a quarter of the budget."""
    budget = default_budget() if budget is None else budget
    return max(1, min(n, budget // 4 // max(1, k * hidden_size * itemsize)))


class _HeadLogitsAt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, rows_per_chunk):
        out = hidden.new_empty(ids.shape, dtype=compute_dtype(hidden.dtype))
        for r0 in range(0, ids.shape[0], rows_per_chunk):
            r1 = r0 + rows_per_chunk
            w = weight.index_select(0, ids[r0:r1].reshape(-1)).view(*ids[r0:r1].shape, -1)
            out[r0:r1] = torch.einsum("nh,nkh->nk", hidden[r0:r1], w).to(out.dtype)
        if bias is not None:
            out += bias.to(out.dtype)[ids]
        ctx.save_for_backward(hidden, weight, bias, ids)
        ctx.rows_per_chunk = rows_per_chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        hidden, weight, bias, ids = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        dtype = compute_dtype(hidden.dtype)
        d_hidden = hidden.new_zeros(hidden.shape, dtype=dtype) if need_h else None
        d_weight = weight.new_zeros(weight.shape, dtype=dtype) if need_w else None
        step = ctx.rows_per_chunk
        for r0 in range(0, ids.shape[0], step):
            r1 = r0 + step
            g, flat_ids = grad[r0:r1].to(dtype), ids[r0:r1].reshape(-1)
            if d_hidden is not None:
                w = weight.index_select(0, flat_ids).view(*ids[r0:r1].shape, -1).to(dtype)
                d_hidden[r0:r1] = torch.einsum("nk,nkh->nh", g, w)
            if d_weight is not None:
                outer = g[:, :, None] * hidden[r0:r1, None, :].to(dtype)
                d_weight.index_add_(0, flat_ids, outer.reshape(-1, hidden.shape[1]))
        d_bias = None
        if need_b:
            d_bias = bias.new_zeros(bias.shape, dtype=dtype).index_add_(
                0, ids.reshape(-1), grad.to(dtype).reshape(-1)
            )
        cast = lambda g, like: None if g is None else g.to(like.dtype)  # noqa: E731
        return cast(d_hidden, hidden), cast(d_weight, weight), cast(d_bias, bias), None, None


def head_logits_at(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    ids: Tensor,
    memory_budget: int | None = None,
) -> Tensor:
    """``hidden[n] · weight[ids[n, j]] + bias[ids[n, j]]`` for 2-D ``hidden`` and ``ids [N, k]``."""
    chunk = _row_chunk(
        ids.shape[0], ids.shape[1], hidden.shape[1], hidden.element_size(), memory_budget
    )
    return _HeadLogitsAt.apply(hidden, weight, bias, ids, chunk)


def _block_top_k(source: Source, t0: int, t1: int, k: int, vocab_tile: int, ws: Workspace):
    device = source.device
    best = {
        "values": torch.full((t1 - t0, k), float("-inf"), dtype=source.dtype, device=device),
        "ids": torch.zeros((t1 - t0, k), dtype=torch.long, device=device),
    }

    def merge(z: Tensor, v0: int, v1: int) -> None:
        tile_values, tile_ids = z.topk(min(k, v1 - v0), dim=1)
        values, order = torch.cat([best["values"], tile_values], 1).topk(k, dim=1)
        best["ids"] = torch.cat([best["ids"], tile_ids + v0], 1).gather(1, order)
        best["values"] = values

    online = online_moments(source, t0, t1, vocab_tile, ("s",), ws, on_tile=merge)
    return best["values"], best["ids"], online.lse


@torch.no_grad()
def top_k_with_lse(
    source: Source, n: int, k: int, plan: ChunkPlan
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` largest transformed logits of each of ``n`` rows (descending), their ids,
    and the rows' log-sum-exp, merging vocabulary tiles online."""
    ws = Workspace(source.device)
    blocks = [_block_top_k(source, t0, t1, k, plan.vocab, ws) for t0, t1 in token_blocks(n, plan)]
    return tuple(torch.cat(parts) for parts in zip(*blocks))


@torch.no_grad()
def head_top_k_logprobs(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    transform: LogitTransform,
    k: int,
    memory_budget: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``k`` most probable next tokens of each row of ``hidden [N, H]`` and their
    log-probabilities ``z_v − logsumexp(z)``, ``z = transform(hidden · Wᵀ + b)`` (soft cap,
    scale, temperature honoured); vocabulary tiles within ``memory_budget``, no ``[N, V]``.

    Returns:
        ``(ids [N, k], logprobs [N, k])``, most probable first.
    """
    vocab = weight.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise ValueError(f"top_k must be an integer in [1, V = {vocab}], got {k!r}")
    n = hidden.shape[0]
    plan = plan_chunks(n, vocab, compute_dtype(hidden.dtype).itemsize, memory_budget)
    values, ids, lse = top_k_with_lse(HeadSource(hidden, weight, bias, transform), n, k, plan)
    return ids, values - lse[:, None]
