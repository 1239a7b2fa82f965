"""One model on the Triton kernels: per-token statistics (recompute schedule) and
per-token losses (gradients in the forward).

Both schedules run the same two kernels of :mod:`.single_kernels`:

* :func:`token_stats` — the forward keeps the per-token moments; the backward, once the
  upstream gradients are known, turns them into the coefficients of the logit gradient
  and recomputes the tiles (8·N·H·V FLOPs against the naive 6·N·H·V).
* :func:`eager_token_loss` — for a loss that is a sum of per-token terms, the upstream
  gradient follows from the moments right away (autograd of the loss on ``[N]`` leaves),
  so the gradient kernel runs inside the forward: a first sweep for the log-sum-exp, a
  second for the gradients (as Cut Cross-Entropy and Liger do), and ``backward`` only
  scales the stored gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmloss.stats.schedule import WithPrecomputedGrads
from lmloss.stats.transform import LogitTransform
from lmloss.stats.triton.config import KernelTiles, grad_filter
from lmloss.stats.triton.launch import (
    Head,
    autotuned,
    cast_grads,
    grad_buffers,
    grad_grid,
    grad_sweeps,
    on_device,
    settings,
    upcast,
    vocab_split,
)
from lmloss.stats.triton.single_kernels import logit_grad_kernel, moments_kernel

Tensor = torch.Tensor

# Statistics read off the kernels' moments; the others stay on the PyTorch engine.
DIFFERENTIABLE = frozenset({"logp", "lse", "entropy", "mean_logit", "sum_sq_probs"})
KERNEL_STATISTICS = DIFFERENTIABLE | {"is_argmax"}


@dataclass(frozen=True)
class Moments:
    """Per-token results of the forward sweep (float32 ``[N]`` each)."""

    m: Tensor  # maximum logit
    lse: Tensor
    mean_z: Tensor  # E_p[z] = Σ e^(z-m) z / Σ e^(z-m)
    zsum: Tensor
    zy: Tensor  # target logit (0 for a target outside [0, V))
    lse2: Tensor  # log Σ e^(2z)
    vocab: int

    def value(self, name: str) -> Tensor:
        if name == "logp":
            return self.zy - self.lse
        if name == "lse":
            return self.lse
        if name == "entropy":
            return self.lse - self.mean_z
        if name == "mean_logit":
            return self.zsum / self.vocab
        if name == "is_argmax":
            return (self.zy >= self.m).to(self.m.dtype)
        if name == "sum_sq_probs":  # log Σ p² = log Σ e^(2z) - 2 lse
            return self.lse2 - 2 * self.lse
        raise KeyError(name)


def head_moments(head: Head, targets: Tensor, tiles: KernelTiles | None = None) -> Moments:
    """One sweep over the vocabulary: the online log-sum-exp and the moments of each token."""
    if tiles is None:
        tiles = autotuned("moments", "forward", head, lambda t: head_moments(head, targets, t))
    cfg, tiles, common = settings("forward", head.hidden.dtype, tiles=tiles)
    n_blocks, splits, per_split = vocab_split(head.n, head.vocab, cfg, tiles)
    out = head.hidden.new_empty((6, splits, head.n), dtype=torch.float32)
    with on_device(head.hidden):
        moments_kernel[(n_blocks, splits)](
            *head.args(),
            targets.contiguous(),
            out,
            head.n,
            head.vocab,
            head.hidden.shape[1],
            per_split,
            *head.transform_args(),
            UPCAST=upcast(head.hidden.dtype),
            **head.flags(),
            **common,
        )
    m_k, s_k, ez_k, zsum_k, zy_k, s2_k = out
    m = m_k.amax(0)
    rescale = (m_k - m).exp()
    s = (s_k * rescale).sum(0)
    return Moments(
        m=m,
        lse=m + s.log(),
        mean_z=(ez_k * rescale).sum(0) / s,
        zsum=zsum_k.sum(0),
        zy=zy_k.sum(0),
        lse2=2 * m + (s2_k * rescale * rescale).sum(0).log(),
        vocab=head.vocab,
    )


def grad_coefficients(moments: Moments, upstream: dict[str, Tensor]) -> Tensor:
    """``[7, N]``: ``c_y, c_p, c_pz, c_1, c_q`` of
    ``dz_v = c_y 1[v=y] + p_v (c_p + c_pz z_v) + c_1 + c_q q_v`` (``q = softmax(2z)``) for
    the upstream gradients of the statistics (see :mod:`lmloss.stats.statistics`),
    ``log Σ e^(2z)`` and the upstream magnitude ``Σ |g|`` the gradient filter is
    relative to."""
    coef = moments.lse.new_zeros((7, moments.lse.shape[0]))
    coef[5] = moments.lse2
    for name, g in upstream.items():
        g = g.to(torch.float32)
        coef[6] += g.abs()
        if name == "logp":  # 1[v=y] - p
            coef[0] += g
            coef[1] -= g
        elif name == "lse":  # p
            coef[1] += g
        elif name == "entropy":  # p (E_p[z] - z)
            coef[1] += g * moments.mean_z
            coef[2] -= g
        elif name == "mean_logit":  # 1/V
            coef[3] += g / moments.vocab
        elif name == "sum_sq_probs":  # 2 (q - p)
            coef[1] -= 2 * g
            coef[4] += 2 * g
    return coef


def head_grads(
    head: Head,
    targets: Tensor,
    lse: Tensor,
    coef: Tensor,
    need: tuple[bool, bool, bool],
    has_q: bool,
    keep_float16: bool = False,
    tiles: KernelTiles | None = None,
) -> tuple[Tensor | None, ...]:
    """Gradients of hidden, weight, bias (inputs' dtypes; see :func:`.launch.cast_grads`
    for ``keep_float16``) for the per-token coefficients; ``has_q``: the ``softmax(2z)``
    term is present (``sum_sq_probs`` got a gradient)."""
    if tiles is None:
        tiles = autotuned(
            "logit_grad",
            "grad",
            head,
            lambda t: head_grads(head, targets, lse, coef, need, has_q, tiles=t),
        )
    cfg, tiles, common = settings("grad", head.hidden.dtype, tiles=tiles)
    grads = grad_buffers(head, need)
    dummy = lse
    skip_below = grad_filter()
    with on_device(head.hidden):
        for sweep, rows, columns in grad_sweeps(grads[0] is not None, any(need[1:])):
            logit_grad_kernel[grad_grid(sweep, head.n, head.vocab, tiles)](
                *head.args(),
                targets.contiguous(),
                lse.contiguous(),
                coef.contiguous(),
                *(dummy if g is None else g for g in grads),
                head.n,
                head.vocab,
                head.hidden.shape[1],
                *head.transform_args(),
                skip_below,
                UPCAST=upcast(head.hidden.dtype),
                NEED_DH=rows and grads[0] is not None,
                NEED_DW=columns and grads[1] is not None,
                NEED_DB=columns and grads[2] is not None,
                FILTER=skip_below > 0,
                HAS_Q=has_q,
                SWEEP=sweep,
                SCALE_DA=head.hidden.dtype == torch.float16,
                GROUP_N=cfg.group_n,
                **head.flags(),
                **common,
            )
    return cast_grads(grads, head, keep_float16)


class _TokenStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, transform, names):
        head = Head.of(hidden, weight, bias, transform)
        moments = head_moments(head, targets)
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.moments, ctx.transform, ctx.names = moments, transform, names
        ctx.set_materialize_grads(False)
        outputs = tuple(moments.value(name) for name in names)
        ctx.mark_non_differentiable(
            *(o for name, o in zip(names, outputs) if name not in DIFFERENTIABLE)
        )
        return outputs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grad_outputs):
        hidden, weight, bias, targets = ctx.saved_tensors
        upstream = {
            name: g
            for name, g in zip(ctx.names, grad_outputs)
            if g is not None and name in DIFFERENTIABLE
        }
        need = tuple(ctx.needs_input_grad[:3])
        if not upstream or not any(need):
            return (None,) * 6
        head = Head.of(hidden, weight, bias, ctx.transform)
        coef = grad_coefficients(ctx.moments, upstream)
        has_q = "sum_sq_probs" in upstream
        dh, dw, db = head_grads(head, targets, ctx.moments.lse, coef, need, has_q)
        return dh, dw, db, None, None, None


def token_stats(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    transform: LogitTransform,
    names: tuple[str, ...],
) -> dict[str, Tensor]:
    """Differentiable statistics ``names`` (a subset of :data:`KERNEL_STATISTICS`) of 2-D
    ``hidden`` rows; the backward recomputes the tiles."""
    return dict(zip(names, _TokenStats.apply(hidden, weight, bias, targets, transform, names)))


def eager_token_loss(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    transform: LogitTransform,
    names: tuple[str, ...],
    token_loss,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``token_loss(stats of all rows, slice(0, N))`` with its head gradients computed now.

    Same contract as :func:`lmloss.stats.single_model.eager_token_loss` (all rows form one
    block)."""
    need = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
    detach = lambda t: None if t is None else t.detach()  # noqa: E731
    head = Head.of(hidden.detach(), weight.detach(), detach(bias), transform)
    with torch.no_grad():
        moments = head_moments(head, targets)
    leaves = {name: moments.value(name).requires_grad_(name in DIFFERENTIABLE) for name in names}
    with torch.enable_grad():
        loss = token_loss(leaves, slice(0, head.n))
        diff = [name for name in names if leaves[name].requires_grad]
        g = torch.autograd.grad(loss, [leaves[n] for n in diff], allow_unused=True)
    values = {name: leaf.detach() for name, leaf in leaves.items()}
    total = loss.detach()
    upstream = {name: gi for name, gi in zip(diff, g) if gi is not None}
    if not any(need):
        return total, values
    if upstream:
        coef = grad_coefficients(moments, upstream)
        has_q = "sum_sq_probs" in upstream
        grads = head_grads(head, targets, moments.lse, coef, need, has_q, keep_float16=True)
    else:
        grads = tuple(
            None if not n else torch.zeros_like(t) for n, t in zip(need, (hidden, weight, bias))
        )
    inputs = [t for t in (hidden, weight, bias) if t is not None]
    present = tuple(g for t, g in zip((hidden, weight, bias), grads) if t is not None)
    return WithPrecomputedGrads.apply(total, present, *inputs), values
